"""``openrlhf-psr report RUN`` (also ``python -m openrlhf_psr.cli.report RUN``): the run's results as tables
(markdown, like the paper's Tables 1, 3 and 4), PNG plots across iterations, and JSON, under ``RUN/report/``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from openrlhf_psr.layout import EVAL_FILE, RunLayout


def _fmt(value, pct=False) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{100 * value:.1f}" if pct else f"{value:.2f}"
    return str(value)


def _fmt_ci(cell: dict | None) -> str:
    """``"6.5 [3.8, 10.8] (200)"`` from an accuracy with its interval."""
    from openrlhf_psr.eval.stats import format_interval

    if not cell or cell["value"] is None:
        return "-"
    if not cell["n"]:  # an older eval.json without its records: the value alone
        return format_interval(cell["value"], None)
    return f"{format_interval(cell['value'], tuple(cell['ci95']) if cell['ci95'] else None)} ({cell['n']})"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _read_eval(path: Path) -> dict:
    """An ``eval.json``; one that is not what the evaluation writes is a one-line error naming it."""
    from openrlhf_psr.errors import DataError
    from openrlhf_psr.io import read_json

    result = read_json(path, "an evaluation result (eval.json)")
    for key in ("benchmarks", "judges"):
        if not isinstance(result.get(key), dict):
            raise DataError(f"{path}: expected an object under {key!r}, found {type(result.get(key)).__name__}")
    return result


def _graded(benchmark: dict) -> int:
    """How many of a benchmark's problems have a gold answer (the denominator of its accuracy)."""
    records = benchmark.get("records")
    if isinstance(records, list):
        return sum(1 for r in records if isinstance(r, dict) and r.get("correct") is not None)
    return int(benchmark["metrics"].get("n") or 0)


def _with_interval(accuracy: float | None, n: int) -> dict:
    """``{"value", "n", "ci95"}``: an accuracy with its Wilson 95% interval (eval/stats.py)."""
    from openrlhf_psr.eval.stats import wilson_interval

    interval = wilson_interval(round(accuracy * n), n) if accuracy is not None and n else None
    return {"value": accuracy, "n": n, "ci95": list(interval) if interval else None}


def build_report(run: Path) -> dict:
    from openrlhf_psr.errors import DataError
    from openrlhf_psr.io import read_json

    if not run.is_dir():
        raise DataError(f"{run}: expected a run folder (runs/<name>), found {'a file' if run.exists() else 'nothing'}")
    layout = RunLayout(run)
    evals = {label: _read_eval(folder / EVAL_FILE) for label, folder in layout.evaluations()}
    searches = {name: read_json(path, "a search summary") for name, path in layout.searches()}
    if not evals and not searches:
        raise DataError(
            f"{run}: expected a run folder with results (*/eval/eval.json or iter_*/search/summary.json), found none"
        )
    benchmarks = sorted({b for e in evals.values() for b in e["benchmarks"]})
    judges = sorted({j for e in evals.values() for j in e["judges"]})
    summary = {"run": str(run), "models": {}, "search": searches}
    for label, e in evals.items():
        accs = {b: e["benchmarks"][b]["metrics"]["accuracy"] for b in e["benchmarks"]}
        graded = [a for a in accs.values() if a is not None]
        summary["models"][label] = {
            "accuracy": accs,
            # Wilson 95% intervals: n problems per benchmark; n pairs per judge set (its two orders are not
            # independent trials, so the pair count is the conservative sample size)
            "accuracy_ci95": {b: _with_interval(accs[b], _graded(e["benchmarks"][b])) for b in e["benchmarks"]},
            "judge_accuracy_ci95": {
                j: _with_interval(r.get("accuracy"), int(r.get("pairs") or 0))
                for j, r in e["judges"].items()
                if isinstance(r, dict)
            },
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
    md = [f"# Report: {run.name}", "", "## Accuracy (%, greedy, [Wilson 95% interval]; Table 1)", ""]
    md.append(_table(["model", *(f"{b} (n)" for b in benchmarks), "average"], [
        [m, *(_fmt_ci(s["accuracy_ci95"].get(b)) for b in benchmarks), _fmt(s["average"], pct=True)]
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
        # a judge offered a tie (data.eval.judge_tie) is also measured on two-wrong-step pairs: how often it ties
        ties = any("tie_rate" in r for s in summary["models"].values() for r in s["judges"].values() if r)
        for m, s in summary["models"].items():
            for j in judges:
                r = s["judges"].get(j)
                if r:
                    rows.append([m, j, _fmt_ci(s["judge_accuracy_ci95"].get(j)), _fmt(r["consistency"], True),
                                 _fmt(1 - r["abstention_rate"], True) if r["abstention_rate"] is not None else "-",
                                 _fmt(r["prob_accuracy"], True), _fmt(r["always_a_rate"], True)]
                                + ([_fmt(r.get("tie_rate"), True)] if ties else []))  # fmt: skip
        md.append(_table(["model", "judge/set", "accuracy [95% CI] (pairs)", "position consistency",
                          "parseable verdicts", "P(better) accuracy", "answers A"]
                         + (["ties on two wrong steps"] if ties else []), rows))  # fmt: skip
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
    layout.report().mkdir(parents=True, exist_ok=True)
    layout.report_markdown().write_text("\n".join(md) + "\n")
    _plots(summary, benchmarks, layout.report_plot())
    from openrlhf_psr.io import atomic_write_text

    atomic_write_text(layout.report_json(), json.dumps(summary, indent=2))
    return summary


def _plots(summary: dict, benchmarks: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from openrlhf_psr.eval.stats import percent_error_bars

    models = list(summary["models"])
    if not models:
        return
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for b in benchmarks:
        cells = [summary["models"][m]["accuracy_ci95"].get(b) or {} for m in models]
        ys, errors = percent_error_bars(cells)
        axes[0].errorbar(models, ys, yerr=errors, marker="o", capsize=3, label=b)
        steps = [summary["models"][m]["steps"].get(b, {}).get("mean_steps") for m in models]
        axes[1].plot(models, [s if s is not None else float("nan") for s in steps], marker="o", label=b)
    axes[0].set(title="accuracy (%, Wilson 95% interval)", xlabel="model")
    axes[1].set(title="steps per solution", xlabel="model")
    for ax in axes:
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="a run folder, runs/<name>")


def run(args: argparse.Namespace) -> int:
    folder = Path(args.run)
    build_report(folder)
    print(RunLayout(folder).report_markdown().read_text())
    return 0


def main(argv: list[str] | None = None) -> int:
    from openrlhf_psr.cli.app import module_main

    return module_main(add_arguments, run, argv, "python -m openrlhf_psr.cli.report", __doc__)


if __name__ == "__main__":
    raise SystemExit(main())
