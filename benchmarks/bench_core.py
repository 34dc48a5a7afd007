"""Benchmarks of the federated core (issue: the core). Each prints a Markdown row and
appends a JSON record to ``benchmarks/results/core.jsonl``.

    python benchmarks/bench_core.py overhead     # Flower simulation vs direct local training
    python benchmarks/bench_core.py throughput   # local-training images/s vs raw fwd+bwd
    python benchmarks/bench_core.py quickstart   # wall time and peak RSS of `semanticfl run`
    python benchmarks/bench_core.py scale        # one round with 1000 virtual clients
    python benchmarks/bench_core.py rounds --limit N   # round time vs the compute limit; longest-first on/off

Times are compared as ratios measured in the same invocation; absolute numbers vary.
Peak memory is the largest sum of RSS over the whole process tree (CLI + Ray workers),
sampled every 0.2 s.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import torch

RESULTS = Path(__file__).parent / "results" / "core.jsonl"
CIFAR_OVERHEAD = ["partition.num_clients=10", "partition.alpha=0.5", "train.local_epochs=1", "engine.parallel_clients=2"]


def record(name: str, values: dict, results: Path = RESULTS) -> None:
    """Append a timestamped JSON record to ``results`` and print it."""
    results.parent.mkdir(exist_ok=True)
    entry = {"benchmark": name, "time": time.strftime("%Y-%m-%d %H:%M:%S"), **values}
    with open(results, "a") as handle:
        handle.write(json.dumps(entry) + "\n")
    print(json.dumps(entry, indent=2))


# --------------------------------------------------------------------------- memory sampling


class PeakTreeRSS:
    """Largest total RSS of a process and all its descendants while the context is open."""

    def __init__(self, root_pid: int) -> None:
        self.root = psutil.Process(root_pid)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._tree_rss())
            time.sleep(0.2)

    def _tree_rss(self) -> int:
        try:
            procs = [self.root, *self.root.children(recursive=True)]
        except psutil.Error:
            return 0
        total = 0
        for proc in procs:
            with contextlib.suppress(psutil.Error):  # a process may exit between listing and reading
                total += proc.memory_info().rss
        return total

    def __enter__(self) -> PeakTreeRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def run_cli(args: list[str], cwd: Path) -> tuple[float, int, subprocess.CompletedProcess]:
    """Run ``semanticfl`` in a subprocess; returns (wall seconds, peak tree RSS bytes, result)."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "semanticfl.cli.main", *args], cwd=cwd, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )
    with PeakTreeRSS(proc.pid) as memory:
        out, err = proc.communicate()
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"semanticfl failed:\n{err[-3000:]}")
    return wall, memory.peak, subprocess.CompletedProcess(args, proc.returncode, out, err)


def read_rounds(out: Path) -> list[dict]:
    (run_dir,) = [p for p in out.iterdir() if p.is_dir()]
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


# --------------------------------------------------------------------------- overhead


_WORKER = {}


def _init_worker(config_toml: str) -> None:
    from semanticfl.engine.experiment import experiment_for

    torch.set_num_threads(1)
    _WORKER["experiment"] = experiment_for(config_toml)


def _train_directly(job: tuple[int, int, dict]) -> tuple[int, dict, int, dict]:
    """One client's local round, exactly what the ClientApp does, without Flower."""
    from semanticfl.algorithms.base import ClientTask, load_arrays
    from semanticfl.seeding import derive_seed

    round_number, partition_id, global_arrays = job
    experiment = _WORKER["experiment"]
    model = experiment.build_model()
    load_arrays(model, global_arrays)
    torch.manual_seed(derive_seed(experiment.config.experiment.seed, round_number, partition_id, 1))
    update = experiment.algorithm.local_train(
        model, experiment.client_data(partition_id), ClientTask(round=round_number),
        experiment.local_settings(), experiment.client_generator(round_number, partition_id),
    )
    return partition_id, update.arrays, update.num_examples, update.metrics


def direct_rounds(config_toml: str, rounds: int) -> list[float]:
    """Round times of the same FedAvg rounds on a 2-process pool (same parallelism as the
    simulation's 2 actors), with the same aggregation and central evaluation."""
    from semanticfl.algorithms.base import ClientUpdate, load_arrays
    from semanticfl.engine.experiment import experiment_for
    from semanticfl.engine.server import sample_clients, server_threads
    from semanticfl.models import state_to_numpy

    experiment = experiment_for(config_toml)
    config = experiment.config
    eval_model = experiment.build_model()
    global_arrays = state_to_numpy(eval_model)
    transform = experiment.eval_transform()
    images, labels = experiment.test_tensors
    times = []
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(config.engine.parallel_clients or 2, initializer=_init_worker, initargs=(config_toml,)) as pool:
        for round_number in range(1, rounds + 1):
            started = time.perf_counter()
            selected = sample_clients(config.experiment.seed, round_number, config.partition.num_clients, config.train.fraction_fit)
            results = pool.map(_train_directly, [(round_number, p, global_arrays) for p in selected], chunksize=1)
            updates = [ClientUpdate(arrays=a, num_examples=n, metrics=m, client_id=p) for p, a, n, m in sorted(results, key=lambda r: r[0])]
            global_arrays = experiment.algorithm.aggregate(global_arrays, updates, round_number)
            load_arrays(eval_model, global_arrays)
            with server_threads():
                accuracy = experiment.algorithm.evaluate(eval_model, images, labels, lambda x: transform(x, None), config.eval.batch_size)["accuracy"]
            times.append(time.perf_counter() - started)
            print(f"direct round {round_number}: {times[-1]:.2f}s acc {accuracy:.2f}")
    return times


def bench_overhead(rounds: int) -> None:
    from semanticfl.config import load_config

    overrides = [*CIFAR_OVERHEAD, f"train.rounds={rounds}"]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        wall, peak, _ = run_cli(["run", "cifar10_cnn", *overrides, f"experiment.output_dir={out}"], out)
        sim = [r["round_time_s"] for r in read_rounds(out)]
    config_toml = load_config("cifar10_cnn", overrides).to_toml()
    direct = direct_rounds(config_toml, rounds)
    # Round 1 includes one-off start-up (actor/process spawn, dataset load): excluded.
    sim_mean, direct_mean = sum(sim[1:]) / (rounds - 1), sum(direct[1:]) / (rounds - 1)
    record("overhead", {
        "setting": "CIFAR-10, simple CNN, 10 clients, Dir(0.5), 1 local epoch, 2 parallel clients",
        "rounds_measured": rounds - 1, "simulation_round_s": sim_mean, "direct_round_s": direct_mean,
        "ratio": sim_mean / direct_mean, "simulation_rounds_s": sim, "direct_rounds_s": direct,
    })


# --------------------------------------------------------------------------- throughput


def bench_throughput(steps: int) -> None:
    """Images/s of one client's local training vs the model's raw forward+backward+step."""
    from semanticfl.algorithms.base import ClientTask
    from semanticfl.config import load_config
    from semanticfl.engine.experiment import Experiment

    torch.set_num_threads(1)
    experiment = Experiment(load_config("cifar10_cnn", CIFAR_OVERHEAD))
    data = experiment.client_data(0)
    settings = experiment.local_settings()
    model = experiment.build_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(settings.batch_size, 3, 32, 32)
    y = torch.randint(0, 10, (settings.batch_size,))
    for _ in range(5):
        _raw_step(model, optimizer, x, y)
    started = time.perf_counter()
    for _ in range(steps):
        _raw_step(model, optimizer, x, y)
    raw = steps * settings.batch_size / (time.perf_counter() - started)

    generator = torch.Generator().manual_seed(0)
    started = time.perf_counter()
    batched = sum(len(labels) for _ in range(5) for _, labels in data.batches(settings.batch_size, generator))
    batching = batched / (time.perf_counter() - started)

    model = experiment.build_model()
    started = time.perf_counter()
    update = experiment.algorithm.local_train(model, data, ClientTask(round=1), settings, torch.Generator().manual_seed(0))
    local = update.num_examples / (time.perf_counter() - started)
    record("throughput", {
        "setting": "CIFAR-10 simple CNN, batch 64, 1 thread; local = client 0's epoch incl. crop/flip/normalise",
        "raw_images_per_s": raw, "local_training_images_per_s": local, "ratio": local / raw,
        "batching_and_transform_images_per_s": batching,
        "client_samples": update.num_examples,
    })


def _raw_step(model, optimizer, x, y) -> None:
    optimizer.zero_grad(set_to_none=True)
    _, logits = model(x)
    torch.nn.functional.cross_entropy(logits, y).backward()
    optimizer.step()


# --------------------------------------------------------------------------- quickstart and scale


def bench_quickstart() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        wall, peak, result = run_cli(["run", f"experiment.output_dir={out}"], out)
        rounds = read_rounds(out)
    record("quickstart", {
        "command": "semanticfl run", "wall_s": wall, "peak_tree_rss_gb": peak / 2**30,
        "rounds": len(rounds), "final_accuracy": rounds[-1]["test_accuracy"],
        "best_accuracy": max(r["test_accuracy"] for r in rounds),
    })


def bench_scale(clients: int) -> None:
    overrides = ["cifar10_cnn", f"partition.num_clients={clients}", "partition.scheme=iid", "train.rounds=1",
                 "train.local_epochs=1", "engine.parallel_clients=2"]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        wall, peak, _ = run_cli(["run", *overrides, f"experiment.output_dir={out}"], out)
        (round_one,) = read_rounds(out)
    record("scale", {
        "setting": f"CIFAR-10, simple CNN, {clients} virtual clients (IID, ~{50000 // clients} samples each), 1 round",
        "round_s": round_one["round_time_s"], "wall_s": wall, "peak_tree_rss_gb": peak / 2**30,
        "clients_answered": round_one["clients"], "failed": round_one["failed_clients"],
    })


# --------------------------------------------------------------------------- round time against the limit


def round_profile(overrides: list[str], rounds: int) -> dict:
    """One `semanticfl run cifar10_cnn` of ``rounds`` rounds; per round after the first: wall time, the sum
    of the clients' own fit times, and the images trained (samples × epochs)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        run_cli(["run", "cifar10_cnn", *overrides, f"train.rounds={rounds}", f"experiment.output_dir={out}"], out)
        measured = read_rounds(out)[1:]
    epochs = int(next(o for o in overrides if o.startswith("train.local_epochs=")).split("=")[1])
    return {
        "round_s": sum(r["round_time_s"] for r in measured) / len(measured),
        "fit_s": sum(c["fit_time_s"] for r in measured for c in r["client_metrics"]) / len(measured),
        "images": sum(c["num_examples"] for r in measured for c in r["client_metrics"]) * epochs / len(measured),
    }


def bench_rounds(rounds: int, limit: float) -> None:
    """Issue 21, item 3: round time against ``images ÷ (limit × cores)`` with and without longest-first
    dispatch (interleaved A/B/A/B), and a 5-of-10 round (``train.fraction_fit=0.5``)."""
    cores = 2
    base = ["partition.alpha=0.1", "train.local_epochs=2", "engine.parallel_clients=2"]
    variants = {"longest_first": [*base, "engine.longest_first=true"], "id_order": [*base, "engine.longest_first=false"],
                "5_of_10": [*base, "train.fraction_fit=0.5"]}
    profiles: dict[str, list[dict]] = {name: [] for name in variants}
    for _ in range(2):
        for name, overrides in variants.items():
            profiles[name].append(round_profile(overrides, rounds))
    for name, runs in profiles.items():
        round_s = statistics.mean(r["round_s"] for r in runs)
        images = runs[0]["images"]
        record("rounds", {
            "setting": "CIFAR-10, simple CNN, 10 clients, Dir(0.1), 2 local epochs, 2 parallel clients",
            "variant": name, "rounds_measured": (rounds - 1) * len(runs), "round_s": round_s,
            "busy_fraction": statistics.mean(r["fit_s"] / (cores * r["round_s"]) for r in runs),
            "images_per_round": images, "limit_images_per_s_per_core": limit,
            "ratio_to_limit": round_s / (images / (limit * cores)),
        })


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("benchmark", choices=["overhead", "throughput", "quickstart", "scale", "rounds"])
    parser.add_argument("--limit", type=float, default=0.0,
                        help="rounds: the 1-thread images/s limit (bench_compute.py's best cnn setting)")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--clients", type=int, default=1000)
    args = parser.parse_args()
    if args.benchmark == "overhead":
        bench_overhead(args.rounds)
    elif args.benchmark == "throughput":
        bench_throughput(args.steps)
    elif args.benchmark == "quickstart":
        bench_quickstart()
    elif args.benchmark == "rounds":
        bench_rounds(args.rounds, args.limit)
    else:
        bench_scale(args.clients)


if __name__ == "__main__":
    main()
