"""``openrlhf-psr evidence RECIPE`` (``python -m openrlhf_psr.cli.evidence``): does the loop improve a model?
Control arms from one M1.

    openrlhf-psr evidence recipes/evidence_cpu.yaml --out docs

One recipe, the ordinary launcher, several runs under ``--runs-dir``:

1. ``<name>``: the recipe with ``stages.iterations=0``: M0 (if ``before_training``) and the SFT'd M1, evaluated.
2. ``<name>-<arm>`` per arm: the same recipe started from that M1 (``model=<name>/sft/model``,
   ``stages.sft.enabled=off``, ``data.eval.before_training=off``), so every arm searches the same prompts with the
   same seeds and budgets and differs only in its judge:

   - ``oracle``: exact arithmetic of the built-in task (the honest upper bound);
   - ``random``: a seeded coin (the control: no gain expected);
   - ``self``: the recipe's own judge (the paper's method);
   - ``likelihood``: the policy's length-normalised log-probability of each step.

   Only the ``self`` arm keeps the recipe's judge sets (its judge accuracy per iteration); the others skip them.
3. The comparison (``--out``: ``evidence.md``, ``evidence.json``, ``evidence.png``): accuracy of every model on the
   held-out benchmarks with Wilson 95% intervals, each arm's final gain over M1 with a paired test on the same
   problems (how many answers went wrong -> right and right -> wrong, McNemar's exact p), each model's arithmetic
   slips per operation in its answers (what a stage fixed and what it broke), judge accuracy per iteration, and for
   every arm's training pairs how often the oracle agrees that the chosen step is the better one.

Every run resumes like any recipe run, so an interrupted evidence run continues where it stopped; ``--report-only``
rebuilds the comparison from finished runs. ``--set`` overrides apply to every run (e.g. a smaller size).
"""

from __future__ import annotations

import argparse
import json
import shlex
import time
from pathlib import Path

from openrlhf_psr.errors import UserError

# arm -> recipe overrides of its judge (``self`` keeps the recipe's). Judges without P(better) count verdicts.
ARMS: dict[str, list[str]] = {
    "oracle": ["psr.judge.name=oracle", "psr.judge.settings={}", "psr.search.aggregate=verdict"],
    "random": ["psr.judge.name=random", "psr.judge.settings={}", "psr.search.aggregate=verdict"],
    "self": [],
    "likelihood": ["psr.judge.name=likelihood", "psr.judge.settings={score: mean}", "psr.search.aggregate=prob"],
}


def arm_overrides(arm: str, name: str, m1: Path) -> list[str]:
    """The ``--set`` overrides that turn the evidence recipe into one arm started from the shared M1.

    >>> arm_overrides("oracle", "ev", Path("/r/ev/sft/model"))[:4]
    ['name=ev-oracle', 'model=/r/ev/sft/model', 'stages.sft.enabled=off', 'data.eval.before_training=off']
    """
    out = [f"name={name}-{arm}", f"model={m1}", "stages.sft.enabled=off", "data.eval.before_training=off"]
    out += [] if arm == "self" else ["data.eval.judge_sets=[]"]
    return out + ARMS[arm]


def run_recipe(recipe: str, overrides: list[str], runs_dir: str, progress=print) -> tuple[Path, float]:
    """One ordinary launcher run (preflight, stages, resume); (its folder, wall seconds)."""
    from openrlhf_psr.cli.run import prepare

    start = time.perf_counter()
    recipe_run, notes = prepare(recipe, overrides, runs_dir)
    for note in notes:
        progress(f"preflight: {note}")
    recipe_run.run(progress=progress)
    return recipe_run.root, time.perf_counter() - start


def absent_judge_sets(recipe: str, overrides: list[str]) -> list[str]:
    """An override without the recipe's judge sets whose file is absent (PRM800K pairs outside the project's
    workplace), each said on stdout; none when every file is there. Read before the recipe is validated, which
    would refuse the missing file."""
    import yaml

    from openrlhf_psr.data.sources import JUDGE_PAIRS, parse_source
    from openrlhf_psr.recipe import base_dir

    specs = ((yaml.safe_load(Path(recipe).read_text()) or {}).get("data") or {}).get("eval", {}).get("judge_sets", [])
    for override in overrides:
        key, _, value = override.partition("=")
        if key.strip() == "data.eval.judge_sets":
            specs = yaml.safe_load(value) or []
    kept = []
    for spec in specs:
        path = parse_source(spec, JUDGE_PAIRS).path
        if path is None or (base_dir() / path).exists():
            kept.append(spec)
        else:
            print(f"evidence: judge set {spec!r} left out: {path} is absent")
    return [] if kept == specs else [f"data.eval.judge_sets={json.dumps(kept)}"]


# -- the comparison --------------------------------------------------------------------------------------------
def _summary(run: Path) -> dict:
    from openrlhf_psr.cli.report import build_report

    return build_report(run)


def oracle_agreement(search: Path) -> dict:
    """How the oracle sees an arm's training pairs: ``agree`` (it ranks the chosen step above the rejected one),
    ``disagree`` (below), ``undecided`` (same label), over all pairs of one search folder."""
    from openrlhf_psr.io import read_jsonl
    from openrlhf_psr.judges.oracle import _RANK, check_step

    counts = {"pairs": 0, "agree": 0, "disagree": 0, "undecided": 0}
    for shard in sorted((search / "pairs").glob("shard-*.jsonl")):
        for pair in read_jsonl(shard):
            previous = tuple(pair.get("prefix_steps") or ())
            chosen = _RANK[check_step(pair["question"], previous, pair["chosen"]).label]
            rejected = _RANK[check_step(pair["question"], previous, pair["rejected"]).label]
            key = "agree" if chosen > rejected else "disagree" if chosen < rejected else "undecided"
            counts["pairs"] += 1
            counts[key] += 1
    counts["agreement"] = counts["agree"] / counts["pairs"] if counts["pairs"] else None
    return counts


def stage_seconds(run: Path) -> float | None:
    """Seconds the run's stages took, from its manifest (started -> finished of every finished stage): the run's cost
    however many times it was resumed (a resumed launch that skips done stages takes seconds of wall time)."""
    try:
        stages = json.loads((run / "manifest.json").read_text()).get("stages", {})
    except (OSError, ValueError):
        return None
    spans = [s["finished"] - s["started"] for s in stages.values() if s.get("started") and s.get("finished")]
    return sum(spans) if spans else None


def _cell(cell: dict | None) -> str:
    from openrlhf_psr.eval.stats import format_interval

    if not cell or cell.get("value") is None:
        return "-"
    return f"{format_interval(cell['value'], tuple(cell['ci95']) if cell.get('ci95') else None)} ({cell['n']})"


def _gain(first: dict | None, last: dict | None) -> dict | None:
    """Final minus M1 in points, and whether the two 95% intervals are disjoint."""
    if not first or not last or first.get("value") is None or last.get("value") is None:
        return None
    disjoint = None
    if first.get("ci95") and last.get("ci95"):
        disjoint = last["ci95"][0] > first["ci95"][1] or last["ci95"][1] < first["ci95"][0]
    return {"points": 100 * (last["value"] - first["value"]), "intervals_disjoint": disjoint}


def eval_records(run: Path, label: str, benchmark: str) -> list[dict] | None:
    """The per-problem records of model ``label`` (``"M2"``) on ``benchmark`` from its eval.json; None when the
    evaluation kept none."""
    from openrlhf_psr.io import read_json
    from openrlhf_psr.layout import RunLayout

    result = read_json(RunLayout(run).eval_result(int(label.removeprefix("M"))), "an evaluation result (eval.json)")
    records = (result.get("benchmarks") or {}).get(benchmark, {}).get("records")
    return [r for r in records if isinstance(r, dict)] if isinstance(records, list) else None


def correct_by_problem(records: list[dict] | None) -> dict | None:
    """``{problem id: correct}`` of one model's records (a record without an id is keyed by its position: one
    benchmark spec always lists its problems in the same order)."""
    if records is None:
        return None
    return {r.get("id", k): bool(r["correct"]) for k, r in enumerate(records) if r.get("correct") is not None}


def slips(records: list[dict] | None) -> dict | None:
    """How often each operation in one model's answers is false (:func:`openrlhf_psr.judges.oracle.slips_by_operator`
    over the records' texts); None without records or claims."""
    from openrlhf_psr.judges.oracle import slips_by_operator

    counts = slips_by_operator(r["text"] for r in records or () if isinstance(r.get("text"), str))
    return counts or None


def compare(base: Path, arms: dict[str, Path], seconds: dict[str, float] | None = None) -> dict:
    """The evidence summary from finished runs (the base run and one run per arm)."""
    base_summary = _summary(base)
    m1 = base_summary["models"].get("M1")
    if m1 is None:
        raise UserError(f"{base}: expected M1's evaluation (sft/eval/eval.json); run the evidence recipe first")
    benchmarks = sorted(m1["accuracy_ci95"])
    seconds = dict(seconds or {})
    for run in (base, *arms.values()):
        measured = stage_seconds(run)
        if measured is not None:
            seconds[run.name] = measured  # the stages' own time: right after a resume as well
    result: dict = {"base": str(base), "benchmarks": benchmarks, "seconds": seconds, "arms": {}}
    result["M0"] = base_summary["models"].get("M0")
    result["M1"] = m1
    from openrlhf_psr.eval.stats import paired_change

    m1_records = {b: eval_records(base, "M1", b) for b in benchmarks}  # read once, paired with every arm
    m1_correct = {b: correct_by_problem(m1_records[b]) for b in benchmarks}
    result["slips"] = {"M1": {b: slips(m1_records[b]) for b in benchmarks}}
    for arm, run in arms.items():
        summary = _summary(run)
        models = {"M1": m1, **{k: v for k, v in summary["models"].items() if k not in ("M0", "M1")}}
        last = list(models)[-1]
        paired = {}  # M1 -> the final model on the problems both answered
        arm_slips = {}  # per later model: how often each operation in its answers is false
        for label in [k for k in models if k != "M1"]:
            records = {b: eval_records(run, label, b) for b in benchmarks}
            arm_slips[label] = {b: slips(records[b]) for b in benchmarks}
            if label == last:
                for b in benchmarks:
                    final = correct_by_problem(records[b])
                    paired[b] = None if m1_correct[b] is None or final is None else paired_change(m1_correct[b], final)
        result["arms"][arm] = {
            "run": str(run),
            "models": models,
            "final": last,
            "gain": {b: _gain(m1["accuracy_ci95"].get(b), models[last]["accuracy_ci95"].get(b)) for b in benchmarks},
            "paired": paired,
            "slips": arm_slips,
            "search": summary["search"],
            "oracle_agreement": {it: oracle_agreement(run / it / "search") for it in summary["search"]},
        }
    return result


def _markdown(result: dict) -> str:
    benchmarks, arms = result["benchmarks"], result["arms"]
    md = ["# Evidence: does the loop improve the model?", ""]
    md += [f"M1 = `{result['base']}/sft/model`, shared by every arm. Accuracy in %, greedy, "
           "[Wilson 95% interval] (n). Paired on the same problems, M1 -> the arm's final model: answers that went "
           "wrong -> right / right -> wrong, and McNemar's exact p (two-sided) that the two are equally likely.",
           ""]  # fmt: skip
    if result.get("command"):
        md += [f"Command: `{result['command']}`", ""]
    for b in benchmarks:
        depth = max((len(a["models"]) for a in arms.values()), default=1)
        header = ["arm", *(f"M{k}" for k in range(1, depth + 1)), "gain (points)", "intervals disjoint",
                  "wrong->right / right->wrong", "McNemar p"]  # fmt: skip
        rows = []
        if result.get("M0"):
            rows.append(["M0 (before SFT)", _cell(result["M0"]["accuracy_ci95"].get(b)), *[""] * (depth + 3)])
        for arm, a in arms.items():
            cells = [_cell(m["accuracy_ci95"].get(b)) for m in a["models"].values()]
            gain = a["gain"].get(b) or {}
            disjoint = {True: "yes", False: "no", None: "-"}[gain.get("intervals_disjoint")]
            points = f"{gain['points']:+.1f}" if gain else "-"
            paired = (a.get("paired") or {}).get(b)
            changes = f"{paired['gained']} / {paired['lost']} (of {paired['n']})" if paired else "-"
            p_value = f"{paired['p_value']:.2g}" if paired else "-"
            rows.append([arm, *cells, *[""] * (depth - len(cells)), points, disjoint, changes, p_value])
        md += [f"## Accuracy on {b}", "", _table(header, rows), ""]
    oracle = arms.get("oracle", {}).get("gain", {})
    selfish = arms.get("self", {}).get("gain", {})
    fractions = [
        f"{b}: self gain / oracle gain = {selfish[b]['points'] / oracle[b]['points']:.2f}"
        for b in benchmarks
        if oracle.get(b) and selfish.get(b) and oracle[b]["points"] > 0
    ]
    if fractions:
        md += ["; ".join(fractions), ""]
    md += _slips_markdown(result)
    judge_rows, ties = [], False
    for arm, a in arms.items():
        for label, model in a["models"].items():
            for judge_set, cell in model.get("judge_accuracy_ci95", {}).items():
                if arm == "self" or label != "M1":
                    tie_rate = (model.get("judges", {}).get(judge_set) or {}).get("tie_rate")
                    ties = ties or tie_rate is not None
                    judge_rows.append([arm, label, judge_set, _cell(cell), _pct(tie_rate)])
    if judge_rows:
        md += ["## Judge accuracy per iteration (%, both orders, [95% CI] (pairs))", ""]
        if ties:  # a judge offered a tie (data.eval.judge_tie): how often it ties two wrong steps
            md += [_table(["arm", "model", "judge/set", "accuracy", "ties on two wrong steps"], judge_rows), ""]
        else:
            md += [_table(["arm", "model", "judge/set", "accuracy"], [r[:-1] for r in judge_rows]), ""]
    pair_rows = []
    # psr.search.majority_filter: how often the votes had an answer, the search agreed (pairs kept), it was right
    majority = any("majority_agrees" in s for a in arms.values() for s in a["search"].values())
    for arm, a in arms.items():
        for it, s in a["search"].items():
            agreement = a["oracle_agreement"].get(it, {})
            pair_rows.append([arm, it, str(s.get("pairs", "-")), _pct(agreement.get("agreement")),
                              str(agreement.get("disagree", "-")), str(agreement.get("undecided", "-")),
                              _pct(s.get("abstention_rate")), _pct(s.get("accuracy"))])  # fmt: skip
            if majority:
                pair_rows[-1] += [_pct(s.get(k)) for k in ("majority_decided", "majority_agrees", "majority_accuracy")]
    if pair_rows:
        md += ["## Training pairs per iteration", "",
               "oracle agrees: the exact checker ranks the chosen step above the rejected one (%)", ""]  # fmt: skip
        header = ["arm", "iteration", "pairs", "oracle agrees", "oracle disagrees", "undecided", "judge abstention",
                  "search accuracy"]  # fmt: skip
        if majority:
            header += ["votes with a majority", "search agrees with it (pairs kept)", "majority right"]
        md += [_table(header, pair_rows), ""]
    if result["seconds"]:
        rows = [[k, f"{v:.0f}"] for k, v in result["seconds"].items()]
        rows.append(["total", f"{sum(result['seconds'].values()):.0f}"])
        md += ["## Wall time of the stages (s)", "", _table(["run", "seconds"], rows), ""]
    return "\n".join(md)


_OPERATIONS = ("+", "-", "*", "/", "chain")


def _slips_markdown(result: dict) -> list[str]:
    """The slips table: per model, the share of its one-operation claims that are false, per operation."""
    models = [("", "M1", result.get("slips", {}).get("M1", {}))]
    models += [(arm, label, by_benchmark) for arm, a in result["arms"].items()
               for label, by_benchmark in a.get("slips", {}).items()]  # fmt: skip
    seen = {op for _, _, by_benchmark in models for counts in by_benchmark.values() for op in counts or {}}
    operations = [op for op in _OPERATIONS if op in seen]
    if not operations:
        return []
    rows = []
    for arm, label, by_benchmark in models:
        for b, counts in by_benchmark.items():
            cells = [_slip_cell(c) if (c := (counts or {}).get(op)) else "-" for op in operations]
            rows.append([arm or "every arm", label, b, *cells])
    return ["## Arithmetic slips in the held-out answers", "",
            "False claims in % of each model's readable `a op b = c` claims, per operation (claims; of the false "
            "ones, how many state a result above ↑ and below ↓ the true one), from its evaluation records: where its "
            "wrong answers come from, which kind of step a stage fixed or broke, and whether it taught the operation "
            "or only moved its bias (slips turning from ↑ to ↓). `chain`: claims with more than one operation.", "",
            _table(["arm", "model", "benchmark", *operations], rows), ""]  # fmt: skip


def _slip_cell(count: dict) -> str:
    """``false % (claims, high↑ low↓)``; reports written before the split (no ``high``) keep ``false % (claims)``."""
    cell = f"{100 * count['false'] / count['claims']:.1f} ({count['claims']}"
    if count["false"] and "high" in count:
        cell += f", {count['high']}↑ {count['false'] - count['high']}↓"
    return cell + ")"


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def _plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from openrlhf_psr.eval.stats import percent_error_bars

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for b in result["benchmarks"]:
        for k, (arm, a) in enumerate(result["arms"].items()):
            cells = [m["accuracy_ci95"].get(b) or {} for m in a["models"].values()]
            xs = [int(label[1:]) + 0.04 * (k - 1.5) for label in a["models"]]
            ys, errors = percent_error_bars(cells)
            axes[0].errorbar(xs, ys, yerr=errors, marker="o", capsize=3, label=f"{arm} ({b})")
    axes[0].set(title="held-out accuracy (%, Wilson 95%)", xlabel="model M(k)")
    a = result["arms"].get("self")
    if a:
        sets = sorted({j for m in a["models"].values() for j in m.get("judge_accuracy_ci95", {})})
        for judge_set in sets:
            cells = [(int(label[1:]), m["judge_accuracy_ci95"].get(judge_set)) for label, m in a["models"].items()]
            cells = [(x, c) for x, c in cells if c and c.get("value") is not None]
            if not cells:
                continue
            ys, errors = percent_error_bars([c for _, c in cells])
            axes[1].errorbar([x for x, _ in cells], ys, yerr=errors, marker="o", capsize=3, label=judge_set)
        axes[1].axhline(50, color="grey", linestyle=":", linewidth=1)
    axes[1].set(title="self judge accuracy (%, Wilson 95%)", xlabel="model M(k)")
    for ax in axes:
        if ax.get_legend_handles_labels()[0]:  # a run without judge sets leaves the judge panel empty
            ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write(result: dict, out: Path) -> Path:
    from openrlhf_psr.io import atomic_write_text

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "evidence.json", json.dumps(result, indent=2))
    _plot(result, out / "evidence.png")
    text = _markdown(result) + "\n![accuracy per iteration per arm; self judge accuracy](evidence.png)\n"
    atomic_write_text(out / "evidence.md", text)
    return out / "evidence.md"


# -- command -----------------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", help="the evidence recipe (recipes/evidence_cpu.yaml)")
    parser.add_argument("--arms", default="oracle,random,self,likelihood", help=f"comma list of {', '.join(ARMS)}")
    parser.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE",
                        help="override a recipe field in every run (the value is YAML), repeatable")  # fmt: skip
    parser.add_argument("--runs-dir", default="runs")
    parser.add_argument(
        "--out", default=None, help="folder for evidence.{md,json,png} (default: RUNS/<name>-evidence)"
    )
    parser.add_argument("--report-only", action="store_true", help="only rebuild the comparison from finished runs")


def command_line(args: argparse.Namespace) -> str:
    """The command that reruns this evidence run (from its parsed arguments, however it was started).

    >>> ns = argparse.Namespace(recipe="r.yaml", arms="oracle,self", set=["a=b c"], runs_dir="runs", out="docs")
    >>> print(command_line(ns))
    openrlhf-psr evidence r.yaml --arms oracle,self --set 'a=b c' --runs-dir runs --out docs
    """
    words = ["openrlhf-psr", "evidence", args.recipe]
    if args.arms != ",".join(ARMS):
        words += ["--arms", args.arms]
    for override in args.set:
        words += ["--set", override]
    words += ["--runs-dir", args.runs_dir] + (["--out", args.out] if args.out else [])
    return shlex.join(words)


def previous_run_facts(out: Path) -> tuple[dict[str, float], str | None]:
    """Wall seconds and command of the evidence run whose report is in ``out`` (``--report-only`` keeps them)."""
    try:
        previous = json.loads((out / "evidence.json").read_text())
    except (OSError, ValueError):
        return {}, None
    return dict(previous.get("seconds") or {}), previous.get("command")


def run(args: argparse.Namespace) -> int:
    from openrlhf_psr.recipe import load_recipe

    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    unknown = [a for a in arms if a not in ARMS]
    if unknown or not arms:
        raise UserError(f"--arms {args.arms!r}: expected a comma list of {', '.join(ARMS)}")
    command = command_line(args)  # as typed, before the driver adds its own overrides
    args.set = [*args.set, *absent_judge_sets(args.recipe, args.set)]
    name = load_recipe(args.recipe, args.set).name
    overrides = [*args.set, "stages.iterations=0"]
    seconds: dict[str, float] = {}
    if args.report_only:
        runs_dir = Path(args.runs_dir).resolve()
        base, roots = runs_dir / name, {arm: runs_dir / f"{name}-{arm}" for arm in arms}
    else:
        print(f"== evidence: M1 ({name})", flush=True)
        base, seconds[name] = run_recipe(args.recipe, overrides, args.runs_dir)
        roots = {}
        for arm in arms:
            print(f"== evidence: arm {arm}", flush=True)
            roots[arm], seconds[f"{name}-{arm}"] = run_recipe(
                args.recipe, [*args.set, *arm_overrides(arm, name, base / "sft" / "model")], args.runs_dir
            )
    out = Path(args.out) if args.out else base.parent / f"{name}-evidence"
    if args.report_only:
        seconds, command = previous_run_facts(out)
    result = compare(base, roots, seconds)
    result["command"] = command
    print(write(result, out).read_text())
    return 0


def main(argv: list[str] | None = None) -> int:
    from openrlhf_psr.cli.app import module_main

    return module_main(add_arguments, run, argv, "python -m openrlhf_psr.cli.evidence", __doc__)


if __name__ == "__main__":
    raise SystemExit(main())
