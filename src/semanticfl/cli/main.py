"""``semanticfl`` — run federated experiments from TOML configs with key=value overrides.

Exit codes: 0 success; 1 a run stopped (too few clients answered; resume it later);
2 bad input (one line on stderr, no traceback); 130 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

from semanticfl.errors import RunAborted, UserError

QUICKSTART_ALGORITHMS = ("fedavg", "semanticfl")

EPILOG = """\
examples:
  semanticfl run                                   # the quickstart: SemanticFL vs FedAvg, Fashion-MNIST, Dir(0.1)
  semanticfl run quickstart algorithm.name=semanticfl train.rounds=5   # one algorithm of it
  semanticfl run cifar10_cnn partition.alpha=0.5 train.rounds=20
  semanticfl run my.toml algorithm.name=fedavg experiment.seed=1
  semanticfl run --resume runs/quickstart-20261122-101500
  semanticfl compare cifar10_cnn --algorithms fedavg,fedprox,scaffold train.rounds=10
  semanticfl features cifar10_cnn algorithm.name=feddifrc data.server_holdout=10000
  semanticfl teacher train cifar10_cnn data.server_holdout=10000 --out teachers/cifar10 --minutes 45
  semanticfl partition cifar10_cnn partition.scheme=pathological partition.classes_per_client=2
  semanticfl config cifar10_cnn train.lr=0.05      # print the resolved config
  semanticfl list                                  # datasets, algorithms, models, shipped configs

CONFIG is a TOML file or the name of a shipped config; overrides are section.key=value
(values parsed as TOML; bare words are strings). Runs go to experiment.output_dir
(default ./runs), one new directory per run.
"""


class OneLineParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line, like every other bad-input error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"semanticfl: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="semanticfl",
        description="Federated learning under heterogeneous clients, on Flower.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=_version())
    parser.add_argument("-v", "--verbose", action="store_true", help="show Flower's and Ray's logs")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser(
        "run", help="run an experiment (no arguments: the quickstart, SemanticFL vs FedAvg side by side)"
    )
    _config_arguments(run)
    run.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its newest checkpoint")
    run.add_argument(
        "--until-round",
        metavar="N",
        type=round_number,
        default=0,
        help="stop after round N (continue later with --resume)",
    )
    run.add_argument(
        "--superlink",
        metavar="HOST:PORT",
        help="with engine.backend=deployment: the SuperLink's address, its --host:--port "
        "(one HTTP port for SuperNodes and flwr run; default 127.0.0.1:8000)",
    )
    run.add_argument("--root-certificates", metavar="PEM", help="CA certificate for a TLS SuperLink")

    part = sub.add_parser("partition", help="show a config's client × class partition and plot it")
    _config_arguments(part)
    part.add_argument("--out", metavar="DIR", default=".", help="where partition.csv/.png go (default .)")

    comp = sub.add_parser("compare", help="several algorithms on one partition and seed: table + plot")
    _config_arguments(comp)
    comp.add_argument(
        "--algorithms",
        required=True,
        metavar="A,B,...",
        help="comma-separated algorithm names, e.g. fedavg,fedprox,scaffold",
    )

    feats = sub.add_parser(
        "features", help="extract the algorithm's teacher features once into the feature store"
    )
    _config_arguments(feats)

    teach = sub.add_parser("teacher", help="train or judge the offline teacher of a config's dataset")
    teach.add_argument("action", choices=("train", "report", "sample"))
    _config_arguments(teach)
    teach.add_argument(
        "--out", metavar="DIR", required=True, help="the teacher folder (train), report or samples folder"
    )
    teach.add_argument("--minutes", type=float, default=45.0, help="train: wall-clock budget (default 45)")
    teach.add_argument(
        "--steps", type=int, default=None, help="train: step budget (exactly resumable with --resume)"
    )
    teach.add_argument(
        "--resume", action="store_true", help="train: continue the unfinished training in --out"
    )
    teach.add_argument("--per-class", type=int, default=10, help="sample: images per class (default 10)")
    teach.add_argument("--timestep", type=int, default=300, help="report: noise level of the probed features")

    show = sub.add_parser("config", help="print the resolved config as TOML")
    _config_arguments(show)

    sub.add_parser("list", help="list datasets, models, algorithms and shipped configs")
    return parser


def round_number(text: str) -> int:
    """``--until-round``: a whole number >= 0 (0 = all rounds)."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a round number >= 1 (or 0 for all), got {text!r}")
    return value


def _config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "items",
        nargs="*",
        metavar="[CONFIG] [key=value ...]",
        help="a TOML file or shipped config name, then overrides",
    )


def _version() -> str:
    from semanticfl import __version__

    return f"semanticfl {__version__}"


def split_items(items: list[str]) -> tuple[str | None, list[str]]:
    """The optional config (first item without '=') and the overrides."""
    if items and "=" not in items[0]:
        return items[0], items[1:]
    stray = [i for i in items if "=" not in i]
    if stray:
        raise UserError(f"'{stray[0]}' is not key=value; the config name must come first")
    return None, items


# --------------------------------------------------------------------------- commands


def cmd_config(args: argparse.Namespace) -> int:
    from semanticfl.config import load_config

    source, overrides = split_items(args.items)
    print(load_config(source, overrides).to_toml(), end="")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from semanticfl.algorithms import algorithm_names
    from semanticfl.config import named_configs
    from semanticfl.data.datasets import dataset_names
    from semanticfl.data.partition import SCHEMES
    from semanticfl.models import model_names

    print("datasets:  ", ", ".join(dataset_names()))
    print("partitions:", ", ".join(SCHEMES))
    print("models:    ", ", ".join(model_names()))
    print("algorithms:", ", ".join(algorithm_names()))
    print("configs:   ", ", ".join(named_configs()))
    return 0


def cmd_partition(args: argparse.Namespace) -> int:
    from semanticfl.cli.runs import write_partition_report
    from semanticfl.config import load_config
    from semanticfl.engine.experiment import Experiment

    source, overrides = split_items(args.items)
    experiment = Experiment(load_config(source, overrides))
    _ = experiment.partitions  # bad input stops here, before --out is created
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create --out folder {out}: {exc.strerror}") from None
    print(write_partition_report(experiment, out))
    print(f"wrote {out / 'partition.csv'} and {out / 'partition.png'}")
    return 0


def cmd_features(args: argparse.Namespace) -> int:
    from semanticfl.cli.runs import extract_features
    from semanticfl.config import load_config
    from semanticfl.engine.experiment import Experiment

    source, overrides = split_items(args.items)
    experiment = Experiment(load_config(source, overrides))
    if not experiment.algorithm.teacher_requests().features:
        raise UserError(
            f"algorithm '{experiment.config.algorithm.name}' uses no teacher features; "
            "choose a teacher-guided one, e.g. algorithm.name=feddifrc"
        )
    for line in extract_features(experiment):
        print(line)
    return 0


def cmd_teacher(args: argparse.Namespace) -> int:
    from semanticfl.cli.teacher import report_teacher, sample_teacher, train_teacher
    from semanticfl.config import load_config
    from semanticfl.engine.experiment import Experiment

    source, overrides = split_items(args.items)
    experiment = Experiment(load_config(source, overrides))
    if args.action == "train":
        folder = train_teacher(experiment, Path(args.out), args.minutes, args.steps, args.resume)
        print(f"teacher: {folder}  (use it with teacher.path={folder})")
        return 0
    if args.action == "sample":
        folder = sample_teacher(experiment, Path(args.out), args.per_class, sys.stderr.isatty())
        print(f"samples: {folder / 'samples.npz'}, grid: {folder / 'grid.png'}")
        return 0
    report = report_teacher(experiment, Path(args.out), args.timestep)
    for name, accuracy in sorted(report["probe_accuracy"].items()):
        print(f"linear probe on {name}: {100 * accuracy:.2f} % test accuracy")
    print(f"extraction: {report['extract_images_per_s']:.0f} images/s; report in {args.out}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from semanticfl.cli.runs import finished_line, print_summary, resume_run, start_run
    from semanticfl.engine.outputs import RunDirectory

    source, overrides = split_items(args.items)
    connection = {"address": args.superlink, "root_certificates": args.root_certificates}
    if not args.items and not args.resume:
        if args.until_round:
            raise UserError(
                "--until-round stops one run, and the quickstart runs two; "
                "stop one of them: semanticfl run quickstart algorithm.name=semanticfl --until-round N"
            )
        from semanticfl.cli.compare import compare, comparison_line

        print(comparison_line(compare(None, [], list(QUICKSTART_ALGORITHMS), connection)))
        return 0
    if args.resume:
        if source or overrides:
            raise UserError("--resume continues a run with its saved config; drop the config and overrides")
        run_dir = RunDirectory.open_for_resume(args.resume)
        done = finished_line(run_dir)
        if done:
            print(done)
            return 0
        summary = resume_run(run_dir, args.until_round, connection)
    else:
        summary = start_run(source, overrides, args.until_round, connection)
    print_summary(summary)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from semanticfl.cli.compare import compare, comparison_line

    source, overrides = split_items(args.items)
    algorithms = [a.strip() for a in args.algorithms.split(",") if a.strip()]
    if not algorithms:
        raise UserError("--algorithms needs at least one name, e.g. --algorithms fedavg,fedprox")
    folder = compare(source, overrides, algorithms, {"address": None, "root_certificates": None})
    print(comparison_line(folder))
    return 0


COMMANDS = {
    "run": cmd_run,
    "compare": cmd_compare,
    "partition": cmd_partition,
    "features": cmd_features,
    "teacher": cmd_teacher,
    "config": cmd_config,
    "list": cmd_list,
}


QUIET_LIBRARIES = {
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "DIFFUSERS_VERBOSITY": "error",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
}


def configure_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("semanticfl").setLevel(logging.INFO if verbose else logging.WARNING)
    if not verbose:
        logging.getLogger("flwr").setLevel(logging.ERROR)
        for variable, value in QUIET_LIBRARIES.items():  # model loading: no progress bars, no hints
            os.environ.setdefault(variable, value)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    stray = [item for item in extra if item.startswith("-") or "=" not in item]
    if stray or (extra and not hasattr(args, "items")):
        parser.error(f"unrecognized arguments: {' '.join(stray or extra)}")
    if extra:
        args.items = [*args.items, *extra]  # overrides given after an option
    command = args.command or "run"
    if args.command is None:
        args = parser.parse_args(["-v", "run"] if args.verbose else ["run"])
    configure_logging(args.verbose)

    try:
        return COMMANDS[command](args)
    except UserError as exc:
        print(f"semanticfl: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except RunAborted as exc:
        print(f"semanticfl: run stopped: {_one_line(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("semanticfl: interrupted; resume with: semanticfl run --resume RUN_DIR", file=sys.stderr)
        return 130


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def entry_point() -> Any:
    sys.exit(main())


if __name__ == "__main__":
    entry_point()
