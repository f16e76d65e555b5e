"""``openrlhf-psr report RUN`` (also ``python -m openrlhf_psr.cli.report RUN``): the run's results as tables
(markdown, like the paper's Tables 1, 3 and 4), PNG plots across iterations, and JSON, under ``RUN/report/``."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path


def _models(run: Path) -> list[tuple[str, Path]]:
    """(label, eval dir) in model order: M0, M1, M2, ..."""
    out = []
    if (run / "m0" / "eval" / "eval.json").is_file():
        out.append(("M0", run / "m0" / "eval"))
    if (run / "sft" / "eval" / "eval.json").is_file():
        out.append(("M1", run / "sft" / "eval"))
    iters = sorted((int(m.group(1)), p) for p in run.glob("iter_*") if (m := re.fullmatch(r"iter_(\d+)", p.name)))
    for t, path in iters:
        if (path / "eval" / "eval.json").is_file():
            out.append((f"M{t + 1}", path / "eval"))
    return out


def _fmt(value, pct=False) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{100 * value:.1f}" if pct else f"{value:.2f}"
    return str(value)


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def build_report(run: Path) -> dict:
    evals = {label: json.loads((d / "eval.json").read_text()) for label, d in _models(run)}
    benchmarks = sorted({b for e in evals.values() for b in e["benchmarks"]})
    judges = sorted({j for e in evals.values() for j in e["judges"]})
    searches = {}
    for path in sorted(run.glob("iter_*/search/summary.json")):
        searches[path.parent.parent.name] = json.loads(path.read_text())
    summary = {"run": str(run), "models": {}, "search": searches}
    for label, e in evals.items():
        accs = {b: e["benchmarks"][b]["metrics"]["accuracy"] for b in e["benchmarks"]}
        graded = [a for a in accs.values() if a is not None]
        summary["models"][label] = {
            "accuracy": accs,
            "average": sum(graded) / len(graded) if graded else None,
            "format": {
                b: {k: e["benchmarks"][b]["metrics"][k] for k in ("boxed_rate", "step_marker_rate")}
                for b in e["benchmarks"]
            },  # fmt: skip
            "steps": {
                b: {k: e["benchmarks"][b]["metrics"][k] for k in ("mean_steps", "mean_step_tokens")}
                for b in e["benchmarks"]
            },  # fmt: skip
            "judges": e["judges"],
            "test_time_scaling": e.get("test_time_scaling", {}),
        }
    md = [f"# Report: {run.name}", "", "## Accuracy (%, greedy; Table 1)", ""]
    md.append(_table(["model", *benchmarks, "average"], [
        [m, *(_fmt(s["accuracy"].get(b), pct=True) for b in benchmarks), _fmt(s["average"], pct=True)]
        for m, s in summary["models"].items()
    ]))  # fmt: skip
    md += ["", "## Format following (%: solutions with a boxed answer / with `Step 1:` markers)", ""]
    md.append(_table(["model", *(f"{b} boxed" for b in benchmarks), *(f"{b} steps" for b in benchmarks)], [
        [m, *(_fmt(s["format"][b]["boxed_rate"], pct=True) if b in s["format"] else "-" for b in benchmarks),
         *(_fmt(s["format"][b]["step_marker_rate"], pct=True) if b in s["format"] else "-" for b in benchmarks)]
        for m, s in summary["models"].items()
    ]))  # fmt: skip
    md += ["", "## Step statistics (Table 4: steps per solution, tokens per step)", ""]
    md.append(_table(["model", *(f"{b} steps" for b in benchmarks), *(f"{b} tok/step" for b in benchmarks)], [
        [m, *(_fmt(s["steps"][b]["mean_steps"]) if b in s["steps"] else "-" for b in benchmarks),
         *(_fmt(s["steps"][b]["mean_step_tokens"]) if b in s["steps"] else "-" for b in benchmarks)]
        for m, s in summary["models"].items()
    ]))  # fmt: skip
    if judges:
        md += ["", "## Judges (Table 3; %, both orders)", ""]
        rows = []
        for m, s in summary["models"].items():
            for j in judges:
                r = s["judges"].get(j)
                if r:
                    rows.append([m, j, _fmt(r["accuracy"], True), _fmt(r["consistency"], True),
                                 _fmt(1 - r["abstention_rate"], True) if r["abstention_rate"] is not None else "-",
                                 _fmt(r["prob_accuracy"], True), _fmt(r["always_a_rate"], True)])  # fmt: skip
        md.append(_table(["model", "judge/set", "accuracy", "position consistency", "parseable verdicts",
                          "P(better) accuracy", "answers A"], rows))  # fmt: skip
    tts_rows = [
        [m, b, _fmt(summary["models"][m]["accuracy"].get(b), True), _fmt(t["accuracy"], True), str(t["width"])]
        for m, s in summary["models"].items()
        for b, t in s["test_time_scaling"].items()
    ]
    if tts_rows:
        md += ["", "## Test-time scaling (Table 5: greedy vs step-wise search with self-judging, accuracy %)", ""]
        md.append(_table(["model", "benchmark", "greedy", "search", "width"], tts_rows))
    if searches:
        md += ["", "## Self-judged search per iteration", ""]
        keys = ["problems", "pairs", "pairs_per_problem", "rollbacks", "abstention_rate", "position_consistency",
                "mean_steps", "mean_step_tokens", "judge_calls_per_accepted_step", "accuracy"]  # fmt: skip
        md.append(_table(["iteration", *keys], [[it, *(_fmt(s.get(k)) for k in keys)] for it, s in searches.items()]))
    out = run / "report"
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.md").write_text("\n".join(md) + "\n")
    _plots(summary, benchmarks, out)
    from openrlhf_psr.shards import atomic_write_text

    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2))
    return summary


def _plots(summary: dict, benchmarks: list[str], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(summary["models"])
    if not models:
        return
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for b in benchmarks:
        ys = [summary["models"][m]["accuracy"].get(b) for m in models]
        axes[0].plot(models, [100 * y if y is not None else float("nan") for y in ys], marker="o", label=b)
        steps = [summary["models"][m]["steps"].get(b, {}).get("mean_steps") for m in models]
        axes[1].plot(models, [s if s is not None else float("nan") for s in steps], marker="o", label=b)
    axes[0].set(title="accuracy (%)", xlabel="model")
    axes[1].set(title="steps per solution", xlabel="model")
    for ax in axes:
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "accuracy_and_steps.png", dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="openrlhf-psr report", description=__doc__)
    parser.add_argument("run", help="runs/<name>")
    args = parser.parse_args(argv)
    run = Path(args.run)
    if not run.is_dir():
        raise SystemExit(f"openrlhf-psr report: {run} is not a run directory")
    build_report(run)
    print((run / "report" / "summary.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
