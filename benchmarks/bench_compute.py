"""The compute limit of this CPU for each client model (issue 21, item 1), and how close local training gets.

For ``cnn``, ``resnet10`` and ``mobilenet`` on 32×32×3 inputs at batch 64, one forward + backward + SGD step
(momentum 0.9) on random tensors, in images/s, for every kernel setting:

- ``fp32`` -- the default memory format (NCHW);
- ``fp32_cl`` -- model and inputs in channels-last (NHWC);
- ``bf16`` / ``bf16_cl`` -- ``torch.autocast("cpu", torch.bfloat16)`` around forward and loss;
- ``compile`` / ``compile_cl`` -- ``torch.compile`` (inductor) of the fp32 model;
- ``engine`` -- epochs of the engine's own FedAvg local training (``Algorithm.local_train``: uint8 decoding,
  batched augmentation, normalisation) on 1,280 images of a CIFAR-10 client, with the engine's default kernel
  settings: what a client reaches against the limit. With it, an ``engine_ratio`` record: engine ÷ the
  fastest setting, the median of 60 alternations of one engine epoch and as many images of that setting.

Each at 1 torch thread (what one simulated client gets: ``engine.threads_per_client = 1``, one client per core)
and at 2 threads (``--threads 1 2``). The variants are measured interleaved, ``--repeats`` times each, and
the median is kept. ``--processes 2`` also measures the fastest one-thread setting in two processes at once,
and the engine's epochs the same way, as two simulated clients run: the machine's limit is their sum, not
twice one process's rate, when the cores share execution units (SMT siblings) or memory bandwidth.

    python benchmarks/bench_compute.py                       # all models, writes benchmarks/results/compute.jsonl
    python benchmarks/bench_compute.py --models cnn --seconds 3
    python benchmarks/bench_compute.py --models cnn --threads 1 --variants fp32_cl engine --processes 2

Run it alone on the machine: every figure is a rate, and the two cores are shared by anything else running.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import multiprocessing
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from semanticfl.models import build_model

RESULTS = Path(__file__).parent / "results" / "compute.jsonl"
BATCH = 64
ENGINE_SAMPLES = 1280
VARIANTS = ("fp32", "fp32_cl", "bf16", "bf16_cl", "compile", "compile_cl", "engine")


def training_step(variant: str, model: torch.nn.Module) -> Callable[[torch.Tensor, torch.Tensor], None]:
    """One SGD step of ``model`` under ``variant``'s kernel settings."""
    channels_last = variant.endswith("_cl")
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    forward = torch.compile(model) if variant.startswith("compile") else model
    autocast = variant.startswith("bf16")

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        optimizer.zero_grad(set_to_none=True)
        context = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
        with context:
            _, logits = forward(x)
            loss = F.cross_entropy(logits, y)
        loss.backward()
        optimizer.step()

    return step


def make_step(model_name: str, variant: str, engine_samples: int) -> Callable[[torch.Tensor, torch.Tensor], None]:
    """One call of ``variant``: an SGD step on a batch, or for ``engine`` one epoch of ``engine_samples``."""
    if variant == "engine":
        return engine_training(model_name, engine_samples)
    return training_step(variant, build_model(model_name, 10, 3, 32))


def images_per_second(step: Callable[[torch.Tensor, torch.Tensor], None], seconds: float, images: int = BATCH) -> float:
    """Calls of ``step`` (``images`` images each) on one fixed random batch for at least ``seconds``."""
    x, y = torch.randn(BATCH, 3, 32, 32), torch.randint(0, 10, (BATCH,))
    steps, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds or steps < 3:
        step(x, y)
        steps += 1
    return steps * images / (time.perf_counter() - started)


def measure_limits(
    model_name: str, variants: list[str], threads: int, seconds: float, repeats: int, engine_samples: int
) -> list[dict]:
    """Every variant of one model, interleaved ``repeats`` times (this VM's speed drifts by up to 2x between
    minutes, so only rates measured side by side compare); the median rate of each, with its range."""
    torch.set_num_threads(threads)
    steps, rows = {}, {}
    rate_per_call = {"engine": engine_samples}
    for variant in variants:
        torch.manual_seed(0)
        try:
            steps[variant] = make_step(model_name, variant, engine_samples)
            images_per_second(steps[variant], 0.5, rate_per_call.get(variant, BATCH))  # warm-up, compilation
        except Exception as error:  # a setting this CPU or build cannot run is a row saying so
            rows[variant] = {"error": f"{type(error).__name__}: {error}"[:200]}
    rates: dict[str, list[float]] = {variant: [] for variant in steps}
    for _ in range(repeats):
        for variant, step in steps.items():
            rates[variant].append(images_per_second(step, seconds, rate_per_call.get(variant, BATCH)))
    for variant, measured in rates.items():
        rows[variant] = {"images_per_s": round(statistics.median(measured), 1),
                         "min": round(min(measured), 1), "max": round(max(measured), 1)}
    measured_rows = [{"model": model_name, "variant": v, "threads": threads, **rows[v]} for v in variants]
    return measured_rows + engine_ratio(model_name, threads, steps, rates, engine_samples)


def engine_ratio(model_name: str, threads: int, steps: dict[str, Callable], rates: dict[str, list[float]],
                 engine_samples: int, pairs: int = 60) -> list[dict]:
    """The engine's speed over the fastest kernel setting's, from ``pairs`` alternations of one engine epoch
    and as many images of that setting's step (a fraction of a second each): this VM's speed drifts within
    seconds, so even two 2-second rates measured back to back can differ by 20 %, while the drift cancels
    in a fraction-of-a-second pair. The median ratio, with its quartiles."""
    limits = {v: r for v, r in rates.items() if v != "engine"}
    if "engine" not in steps or not limits:
        return []
    fastest = max(limits, key=lambda v: statistics.median(limits[v]))
    x, y = torch.randn(BATCH, 3, 32, 32), torch.randint(0, 10, (BATCH,))
    limit_calls = max(1, engine_samples // BATCH)
    ratios = []
    for _ in range(pairs):
        engine_seconds = _seconds(lambda: steps["engine"](x, y))
        limit_seconds = _seconds(lambda: [steps[fastest](x, y) for _ in range(limit_calls)])
        ratios.append(limit_seconds * engine_samples / (limit_calls * BATCH) / engine_seconds)
    quartiles = statistics.quantiles(ratios, n=4)
    return [{"model": model_name, "variant": "engine_ratio", "threads": threads, "against": fastest,
             "ratio": round(statistics.median(ratios), 3), "q1": round(quartiles[0], 3),
             "q3": round(quartiles[2], 3), "pairs": pairs}]


def _seconds(call: Callable[[], object]) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def engine_training(model_name: str, samples: int) -> Callable[[torch.Tensor, torch.Tensor], None]:
    """A "step" that is one epoch of the engine's FedAvg local training (``Algorithm.local_train`` with the
    engine's default kernel settings: uint8 decoding, batched augmentation, normalisation) on the first
    ``samples`` images of client 1's CIFAR-10 partition; it ignores the random batch it is given."""
    from semanticfl.algorithms.base import ClientTask
    from semanticfl.config import load_config
    from semanticfl.engine.experiment import Experiment

    experiment = Experiment(load_config("cifar10_cnn", [f"model.name={model_name}", "train.local_epochs=1"]))
    full = experiment.client_data(1)
    data = dataclasses.replace(full, images=full.images[:samples], labels=full.labels[:samples])
    algorithm, model, settings = experiment.algorithm, experiment.build_model(), experiment.local_settings()
    generator = torch.Generator().manual_seed(0)

    def epoch(x: torch.Tensor, y: torch.Tensor) -> None:
        algorithm.local_train(model, data, ClientTask(round=1), settings, generator)

    return epoch


def concurrent_limit(model_name: str, variant: str, processes: int, seconds: float, repeats: int) -> dict:
    """``variant``'s one-thread rate measured in ``processes`` processes at once (each measurement started
    together behind a barrier), ``repeats`` times: the median of the summed rates, and each process's rates."""
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(processes), context.Queue()
    workers = [context.Process(target=_rates_behind_barrier,
                               args=(model_name, variant, seconds, repeats, barrier, results))
               for _ in range(processes)]
    for worker in workers:
        worker.start()
    per_process = [results.get() for _ in workers]
    for worker in workers:
        worker.join()
    sums = [sum(rates) for rates in zip(*per_process)]
    return {"model": model_name, "variant": variant, "threads": 1, "processes": processes,
            "images_per_s": round(statistics.median(sums), 1), "min": round(min(sums), 1),
            "max": round(max(sums), 1), "each": [[round(r, 1) for r in rates] for rates in per_process]}


def _rates_behind_barrier(model_name: str, variant: str, seconds: float, repeats: int, barrier, results) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    images = ENGINE_SAMPLES if variant == "engine" else BATCH
    step = make_step(model_name, variant, ENGINE_SAMPLES)
    images_per_second(step, 0.5, images)
    rates = []
    for _ in range(repeats):
        barrier.wait()
        rates.append(images_per_second(step, seconds, images))
    results.put(rates)


@functools.cache
def cpu_name() -> str:
    """The CPU's model name (this VM's host changes between sessions, and its speed and ISA with it)."""
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def record(entry: dict) -> None:
    entry = {"benchmark": "compute_limit", "time": time.strftime("%Y-%m-%d %H:%M:%S"), "cpu": cpu_name(),
             "isa": torch.backends.cpu.get_cpu_capability(), **entry}
    RESULTS.parent.mkdir(exist_ok=True)
    with open(RESULTS, "a") as handle:
        handle.write(json.dumps(entry) + "\n")
    print(json.dumps(entry), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["cnn", "resnet10", "mobilenet"])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--seconds", type=float, default=2.0, help="timed seconds per measurement")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved measurements per variant")
    parser.add_argument("--engine-samples", type=int, default=ENGINE_SAMPLES, help="images of the engine's epoch")
    parser.add_argument("--processes", type=int, default=1,
                        help="also measure the fastest one-thread setting and the engine in this many "
                             "processes at once")
    args = parser.parse_args()
    for model_name in args.models:
        fastest_one_thread = None
        for threads in args.threads:
            rows = measure_limits(model_name, args.variants, threads, args.seconds, args.repeats,
                                  args.engine_samples)
            for row in rows:
                record(row)
            if threads == 1:
                fastest_one_thread = _fastest(rows)
        if args.processes > 1 and fastest_one_thread:
            concurrent = [fastest_one_thread] + (["engine"] if "engine" in args.variants else [])
            for variant in concurrent:
                record(concurrent_limit(model_name, variant, args.processes, args.seconds, args.repeats))


def _fastest(rows: list[dict]) -> str | None:
    limits = [r for r in rows if r["variant"] not in ("engine", "engine_ratio") and "images_per_s" in r]
    return max(limits, key=lambda r: r["images_per_s"])["variant"] if limits else None


if __name__ == "__main__":
    main()
