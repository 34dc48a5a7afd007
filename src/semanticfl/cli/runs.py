"""Starting and resuming runs: validate first, then create the run directory, then launch."""

from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from semanticfl.algorithms import check_algorithm_tables
from semanticfl.config import config_from_dict, load_config, parse_toml, read_config_text
from semanticfl.data.partition import (
    class_count_table,
    format_count_table,
    save_count_table_csv,
    save_partition_heatmap,
)
from semanticfl.engine.experiment import Experiment
from semanticfl.engine.outputs import RunDirectory, partition_words
from semanticfl.errors import UserError

console = Console(stderr=True, soft_wrap=True)  # paths in one piece, for copy and paste


def preflight(experiment: Experiment) -> None:
    """Fail on bad input (dataset, partition, model, algorithm, teacher) before writing anything;
    extract the algorithm's teacher features once, before any client starts."""
    check_inputs(experiment)
    requests = experiment.algorithm.teacher_requests()
    if requests.features:
        extract_features(experiment)
    if requests.anchors:
        experiment.algorithm.receive_anchors(experiment.teacher_targets.anchors(requests.anchors))
    if requests.guidance:
        experiment.teacher_targets.progress = sys.stderr.isatty()
        _ = experiment.guidance_arrays


def check_inputs(experiment: Experiment) -> None:
    """What bad input can break before a run starts: algorithm tables, dataset, partition, device, model."""
    check_algorithm_tables(experiment.config.algorithm.params)
    _ = experiment.partitions
    check_device(experiment.config.engine.device)
    experiment.build_model()


def check_device(device: str) -> None:
    """``cuda``/``cuda:N`` must be a GPU this machine has (the config has checked the spelling)."""
    if device == "cpu":
        return
    import torch

    index = int(device.partition(":")[2] or 0)
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if index >= count:
        raise UserError(
            f"engine.device={device} but this machine has {count} usable CUDA device(s); "
            f"use engine.device=cpu{' or cuda:0' if count else ''}"
        )


def extract_features(experiment: Experiment) -> list[str]:
    """Fill the feature store for every teacher request; one line per entry (size, time, rate)."""
    targets = experiment.teacher_targets
    targets.progress = sys.stderr.isatty()
    requests = experiment.algorithm.teacher_requests().features
    lines = [
        f"{request.name}: conditioned on the client model, so each client extracts it every round "
        f"({request.per_sample_shape()} per sample, PCA fitted on the public split; not cached)"
        for request in requests
        if request.conditioned
    ]
    for request in (r for r in requests if not r.conditioned):
        started = time.perf_counter()
        entry = targets.entry(request, experiment.client_pool)
        seconds = time.perf_counter() - started
        size = sum(a.nbytes for a in entry.arrays.values())
        passes = len(experiment.client_pool) * len(request.prompts)
        lines.append(
            f"{request.name}: {len(experiment.client_pool)} samples × {request.per_sample_shape()} "
            f"({size / 2**20:.1f} MiB, {passes} U-Net passes) in {seconds:.1f} s → {entry.path}"
        )
    return lines


def write_partition_report(experiment: Experiment, folder: Path) -> str:
    """partition.csv + partition.png in ``folder``; returns the table as text."""
    dataset = experiment.dataset
    table = class_count_table(dataset.train_labels, experiment.partitions, dataset.num_classes)
    save_count_table_csv(table, dataset.classes, folder / "partition.csv")
    p = experiment.config.partition
    title = f"{dataset.name}: {partition_words(p)}, {p.num_clients} clients"
    save_partition_heatmap(table, dataset.classes, folder / "partition.png", title=title)
    return format_count_table(table, dataset.classes)


def check_until_round(until_round: int, rounds: int) -> None:
    """``--until-round`` (>= 0, checked by the parser) must not pass the run's last round."""
    if until_round > rounds:
        raise UserError(
            f"--until-round {until_round} is not a round of this run (train.rounds = {rounds}); "
            f"pass a round from 1 to {rounds}, or 0 for all"
        )


def start_run(
    source: str | None, overrides: list[str], until_round: int, connection: dict[str, str | None]
) -> dict[str, Any]:
    config = load_config(source, overrides)
    check_until_round(until_round, config.train.rounds)
    experiment = Experiment(config)
    preflight(experiment)
    run_dir = RunDirectory.create(config.experiment.output_dir, config.experiment.name)
    config_toml = config.to_toml()
    run_dir.write_config(config_toml)
    write_partition_report(experiment, run_dir.path)
    console.print(f"run directory: {run_dir.path}")
    return launch(experiment, config_toml, run_dir, False, until_round, connection)


def resume_run(run_dir: RunDirectory, until_round: int, connection: dict[str, str | None]) -> dict[str, Any]:
    config_path = run_dir.file("config.toml")
    config_toml = read_config_text(config_path)
    config = config_from_dict(parse_toml(config_toml, str(config_path)))
    check_until_round(until_round, config.train.rounds)
    experiment = Experiment(config)
    preflight(experiment)
    console.print(f"resuming: {run_dir.path}")
    return launch(experiment, config_toml, run_dir, True, until_round, connection)


def launch(
    experiment: Experiment,
    config_toml: str,
    run_dir: RunDirectory,
    resume: bool,
    until_round: int,
    connection: dict[str, str | None],
) -> dict[str, Any]:
    """Run on the configured engine; ``until_round`` > 0 stops early (resume later)."""
    if experiment.config.engine.backend == "deployment":
        from semanticfl.engine.deployment import run_deployment_engine

        return run_deployment_engine(config_toml, run_dir, resume, until_round, connection)
    from semanticfl.engine.simulation import run_simulation_engine

    return run_simulation_engine(experiment, config_toml, str(run_dir.path), resume, until_round)


MULTIMODAL_ROWS = {
    "final_server_rsum": "final server rsum (of 600)",
    "server_r1_i2t": "server R@1 image→text (%)",
    "server_r1_t2i": "server R@1 text→image (%)",
    "client_image_top1": "image clients: mean top-1 (%)",
    "client_text_top1": "text clients: mean top-1 (%)",
    "client_pair_rsum": "image-text clients: mean rsum",
}
"""Summary fields of model-heterogeneous multimodal runs (FedAFD), printed when present."""


def print_summary(summary: dict[str, Any]) -> None:
    """The final table of a run."""
    table = Table(title=f"{summary['experiment']} — {summary['algorithm']} on {summary['dataset']}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    rows = [
        ("rounds", summary["rounds"]),
        ("final test accuracy (%)", _fmt(summary["final_accuracy"])),
        ("best test accuracy (%)", f"{_fmt(summary['best_accuracy'])} (round {summary['best_round']})"),
        ("mean round time (s)", _fmt(summary["mean_round_time_s"])),
        ("total time (s)", _fmt(summary["total_time_s"])),
        ("MB down / client / round", _fmt(_mb(summary["bytes_down_per_client_per_round"]))),
        ("MB up / client / round", _fmt(_mb(summary["bytes_up_per_client_per_round"]))),
        ("failed client-rounds", summary["failed_client_rounds"]),
    ]
    if summary.get("target_accuracy"):
        rows.append(
            (f"rounds to {summary['target_accuracy']}%", summary["rounds_to_target"] or "not reached")
        )
    rows += [
        (label, _fmt(summary[key])) for key, label in MULTIMODAL_ROWS.items() if summary.get(key) is not None
    ]
    if summary.get("target_rsum"):
        rows.append(
            (
                f"rounds to server rsum {summary['target_rsum']}",
                summary["rounds_to_target_rsum"] or "not reached",
            )
        )
    for name, value in rows:
        table.add_row(name, str(value))
    Console().print(table)
    console.print(f"results: {summary['run_dir']}")
    if not summary["complete"]:
        console.print(
            f"unfinished: stopped after round {summary['rounds']}; continue with: "
            f"{resume_command(summary['run_dir'])}"
        )


def resume_command(run_dir: str | Path) -> str:
    return f"semanticfl run --resume {shlex.quote(str(run_dir))}"


def finished_line(run_dir: RunDirectory) -> str | None:
    """One line if the run has done all its rounds (nothing to resume), else None."""
    if not run_dir.finished():
        return None
    summary = run_dir.read_summary()
    return (
        f"{run_dir.path} is already finished ({summary['rounds']} rounds, final test accuracy "
        f"{_fmt(summary['final_accuracy'])} %); nothing to resume, results in {run_dir.file('summary.json')}"
    )


def _fmt(value: Any) -> str:
    return "—" if value is None else f"{value:.2f}"


def _mb(value: float | None) -> float | None:
    return None if value is None else value / 1e6
