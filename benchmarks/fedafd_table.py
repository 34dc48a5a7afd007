"""FedAFD's benchmark table from the run directories of benchmarks/fedafd.sh.

Prints a Markdown table (one row per setting and method: final client metrics per kind, final server
R@1 both ways and rsum, rounds to a server rsum, mean round time, MB per client per round), then one of
the gradient diagnostics (mean norm per step of BAA's and the task's gradient on the image and text
clients' encoders, over all rounds) for the runs that have them, and writes the rows to
benchmarks/results/fedafd.json. With ``--merge``, rows of that file whose setting and method OUT has no
finished run for are kept as they were recorded.

    python benchmarks/fedafd_table.py [OUT] [--target-rsum 300] [--merge]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

METHODS = ("fedafd", "local", "creamfl_style", "no_baa", "no_gff", "no_sed", "fedafd_beta0.05", "code",
           "code_baa", "code_no_decay", "code_baa_once", "code_paper_gff", "minilm_local", "minilm_fedafd", "minilm_code")
LABELS = {
    "fedafd": "FedAFD", "local": "LOCAL", "creamfl_style": "CreamFL-style",
    "no_baa": "FedAFD w/o BAA", "no_gff": "FedAFD w/o GFF", "no_sed": "FedAFD w/o SED (mean)",
    "fedafd_beta0.05": "FedAFD, β = 0.05", "code": "FedAFD, variant=code",
    "code_baa": "FedAFD, BAA as the code (D, loss, ×0.5, Adam)",
    "code_no_decay": "variant=code, no lr decay", "code_baa_once": "variant=code, BAA once a round",
    "code_paper_gff": "variant=code, the paper's GFF",
    "minilm_local": "LOCAL, MiniLM text", "minilm_fedafd": "FedAFD, MiniLM text",
    "minilm_code": "FedAFD, variant=code, MiniLM text",
}
DIAGNOSTICS = tuple(f"{loss}_grad_norm_{kind}" for loss in ("baa", "task") for kind in ("image", "text"))
"""Mean over rounds of ``client_<kind>_<loss>_grad_norm`` (absent: the run has no such diagnostic)."""


def diagnostics(rounds: list[dict]) -> dict:
    out = {}
    for name in DIAGNOSTICS:
        loss, _, kind = name.partition("_grad_norm_")
        values = [r[f"client_{kind}_{loss}_grad_norm"] for r in rounds if f"client_{kind}_{loss}_grad_norm" in r]
        out[name] = sum(values) / len(values) if values else None
    return out


def rows(out: Path, target: float) -> list[dict]:
    found = []
    for summary_path in sorted(out.glob("*/summary.json")):
        summary = json.loads(summary_path.read_text())
        if not summary.get("complete"):
            continue
        setting, _, method = summary["experiment"].partition("-")
        rounds = [json.loads(line) for line in (summary_path.parent / "metrics.jsonl").read_text().splitlines()]
        last = rounds[-1]
        found.append({
            "setting": setting,
            "method": method,
            "client_image_top1": last["client_image_top1"],
            "client_text_top1": last["client_text_top1"],
            "client_pair_rsum": last["client_pair_rsum"],
            "server_r1_i2t": last["server_r1_i2t"],
            "server_r1_t2i": last["server_r1_t2i"],
            "server_rsum": last["server_rsum"],
            "target_rsum": target,
            "rounds_to_target_rsum": next((r["round"] for r in rounds if r["server_rsum"] >= target), None),
            "rounds": len(rounds),
            "mean_round_time_s": summary["mean_round_time_s"],
            "mb_down_per_client_round": summary["bytes_down_per_client_per_round"] / 1e6,
            "mb_up_per_client_round": summary["bytes_up_per_client_per_round"] / 1e6,
            **diagnostics(rounds),
            "run_dir": summary["run_dir"],
        })
    return found


def ordered(table: list[dict]) -> list[dict]:
    order = {m: i for i, m in enumerate(METHODS)}
    return sorted(table, key=lambda r: (r["setting"] != "dir0.1", order.get(r["method"], 99)))


def merged(fresh: list[dict], recorded: list[dict]) -> list[dict]:
    """``fresh`` rows, and the ``recorded`` ones of a setting and method ``fresh`` has none of."""
    done = {(r["setting"], r["method"]) for r in fresh}
    return fresh + [r for r in recorded if (r["setting"], r["method"]) not in done]


def markdown(table: list[dict]) -> str:
    head = ("| setting | method | image top-1 | text top-1 | image-text rsum | server R@1 i→t | server R@1 t→i "
            "| server rsum | rounds to rsum ≥ {t:g} | round (s) | MB down / up per client-round |")
    lines = [head.format(t=table[0]["target_rsum"] if table else 0), "|" + "---|" * 11]
    for r in table:
        lines.append(
            f"| {r['setting']} | {LABELS.get(r['method'], r['method'])} | {r['client_image_top1']:.2f} "
            f"| {r['client_text_top1']:.2f} | {r['client_pair_rsum']:.1f} | {r['server_r1_i2t']:.2f} "
            f"| {r['server_r1_t2i']:.2f} | {r['server_rsum']:.1f} | {r['rounds_to_target_rsum'] or '—'} "
            f"| {r['mean_round_time_s']:.1f} | {r['mb_down_per_client_round']:.2f} / {r['mb_up_per_client_round']:.2f} |"
        )
    return "\n".join(lines)


def diagnostics_markdown(table: list[dict]) -> str:
    with_norms = [r for r in table if r.get("task_grad_norm_image") is not None]
    lines = ["| setting | method | BAA ‖∇‖ image | task ‖∇‖ image | BAA ‖∇‖ text | task ‖∇‖ text |", "|" + "---|" * 6]
    number = lambda v: "—" if v is None else f"{v:.4f}"
    for r in with_norms:
        lines.append(f"| {r['setting']} | {LABELS.get(r['method'], r['method'])} | {number(r['baa_grad_norm_image'])} "
                     f"| {number(r['task_grad_norm_image'])} | {number(r['baa_grad_norm_text'])} | {number(r['task_grad_norm_text'])} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", default="benchmarks/out/fedafd")
    parser.add_argument("--target-rsum", type=float, default=300.0)
    parser.add_argument("--merge", action="store_true", help="keep recorded rows that OUT has no run for")
    args = parser.parse_args()
    results = Path(__file__).parent / "results"
    results.mkdir(exist_ok=True)
    path = results / "fedafd.json"
    table = rows(Path(args.out), args.target_rsum)
    if args.merge and path.is_file():
        table = merged(table, json.loads(path.read_text()))
    table = ordered(table)
    path.write_text(json.dumps(table, indent=2) + "\n")
    print(markdown(table))
    print()
    print(diagnostics_markdown(table))


if __name__ == "__main__":
    main()
