"""Starting and resuming runs: validate first, then create the run directory, then launch."""

from __future__ import annotations

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
from semanticfl.engine.outputs import RunDirectory
from semanticfl.errors import UserError

console = Console(stderr=True)


def preflight(experiment: Experiment) -> None:
    """Fail on bad input (dataset, partition, model, algorithm, teacher) before writing anything;
    extract the algorithm's teacher features once, before any client starts."""
    check_inputs(experiment)
    if experiment.algorithm.feature_requests():
        extract_features(experiment)
    if experiment.algorithm.anchor_requests():
        experiment.algorithm.receive_anchors(experiment.teacher_targets.anchors())


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
    lines = [
        f"{name}: conditioned on the client model, so each client extracts it every round "
        f"({extractor.request.per_sample_shape()} per sample, PCA fitted on the public split; not cached)"
        for name, extractor in targets.conditioned_extractors.items()
    ]
    for request in targets.cached_requests:
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
    title = f"{dataset.name}: {p.scheme} ({_scheme_detail(experiment)}), {p.num_clients} clients"
    save_partition_heatmap(table, dataset.classes, folder / "partition.png", title=title)
    return format_count_table(table, dataset.classes)


def _scheme_detail(experiment: Experiment) -> str:
    p = experiment.config.partition
    details = {
        "dirichlet": f"α={p.alpha}",
        "pathological": f"#C={p.classes_per_client}",
        "shards": f"{p.shards_per_client} shards/client",
        "quantity": f"size α={p.quantity_alpha}",
        "iid": "IID",
    }
    detail = details.get(p.scheme, p.scheme)
    return detail + (f", long-tail IF={p.imbalance_factor}" if p.imbalance_factor > 1 else "")


def start_run(
    source: str | None, overrides: list[str], until_round: int, connection: dict[str, str | None]
) -> dict[str, Any]:
    config = load_config(source, overrides)
    experiment = Experiment(config)
    preflight(experiment)
    run_dir = RunDirectory.create(config.experiment.output_dir, config.experiment.name)
    config_toml = config.to_toml()
    run_dir.write_config(config_toml)
    write_partition_report(experiment, run_dir.path)
    console.print(f"run directory: {run_dir.path}")
    return launch(experiment, config_toml, run_dir, False, until_round, connection)


def resume_run(path: str, until_round: int, connection: dict[str, str | None]) -> dict[str, Any]:
    run_dir = RunDirectory.open_for_resume(path)
    config_path = run_dir.file("config.toml")
    config_toml = read_config_text(config_path)
    experiment = Experiment(config_from_dict(parse_toml(config_toml, str(config_path))))
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


def _fmt(value: Any) -> str:
    return "—" if value is None else f"{value:.2f}"


def _mb(value: float | None) -> float | None:
    return None if value is None else value / 1e6
