"""The run directory: every path a recipe run's stages write and read, spelled in one place.

``runs/<name>/``::

    manifest.json                  recipe snapshot, package versions, each stage's state, command and fingerprint
    fingerprint_cache.json         content hashes of stage inputs (keyed by size and mtime)
    m0/eval/                       M0 evaluated (eval.json, parts/)
    sft/data.jsonl                 the IFT + EFT mixture
    sft/{model,ckpt,tb,eval}/      M1, its DeepSpeed checkpoints, its TensorBoard logs, its evaluation
    iter_<t>/search/               iteration t's step-wise search with M(t): pairs/, trajectories/, summary.json
    iter_<t>/model/                M(t+1), trained on those pairs
    iter_<t>/dpo/{ckpt,tb}/        that training's checkpoints and TensorBoard logs
    iter_<t>/eval/                 M(t+1) evaluated
    logs/<stage>.log               each stage's output (stage ``iter_1/search`` -> ``logs/iter_1_search.log``)
    report/{summary.md,summary.json,accuracy_and_steps.png}

Models are numbered as in the paper: M0 is the recipe's model, M1 the SFT output, M(t+1) iteration t's output.
The launcher builds its commands from these paths, trainer plugins name their outputs with them, and the report
finds results with them, so a change of layout is a change here only. Pure: no heavy imports, and only
:meth:`RunLayout.evaluations` and :meth:`RunLayout.searches` look at the disk.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

EVAL_FILE = "eval.json"  # what ``openrlhf_psr.cli.evaluate --out DIR`` writes in DIR
SEARCH_SUMMARY = "summary.json"  # what ``openrlhf_psr.cli.search --out DIR`` writes in DIR last


@dataclass(frozen=True)
class RunLayout:
    """The paths of the run folder ``root`` (nothing is created).

    >>> run = RunLayout("runs/demo")
    >>> str(run.search(2)), str(run.model(3)), str(run.eval(3))
    ('runs/demo/iter_2/search', 'runs/demo/iter_2/model', 'runs/demo/iter_2/eval')
    >>> str(run.model(1)), str(run.eval(0)), str(run.log("iter_1/dpo"))
    ('runs/demo/sft/model', 'runs/demo/m0/eval', 'runs/demo/logs/iter_1_dpo.log')
    """

    root: Path

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root))

    # -- bookkeeping ------------------------------------------------------------------------------------------
    def manifest(self) -> Path:
        return self.root / "manifest.json"

    def fingerprint_cache(self) -> Path:
        return self.root / "fingerprint_cache.json"

    def log(self, stage: str) -> Path:
        """A stage's log; the stage name's ``/`` becomes ``_`` (one flat folder)."""
        return self.root / "logs" / (stage.replace("/", "_") + ".log")

    # -- SFT (M0 -> M1) ---------------------------------------------------------------------------------------
    def sft_data(self) -> Path:
        return self.root / "sft" / "data.jsonl"

    def sft_ckpt(self) -> Path:
        return self.root / "sft" / "ckpt"

    def sft_tb(self) -> Path:
        return self.root / "sft" / "tb"

    def sft_adapter(self) -> Path:
        """SFT with LoRA (``--ds.lora.rank``): upstream's adapter, which ``sft_merge`` merges into ``sft/model``."""
        return self.root / "sft" / "lora_adapter"

    # -- iteration t (M(t) -> M(t+1)) -------------------------------------------------------------------------
    def iteration(self, t: int) -> Path:
        return self.root / f"iter_{_positive(t, 'iteration')}"

    def search(self, t: int) -> Path:
        """Iteration t's search output folder (the step-DPO dataset of that iteration)."""
        return self.iteration(t) / "search"

    def search_summary(self, t: int) -> Path:
        """Written last by the search: its presence means the search finished."""
        return self.search(t) / SEARCH_SUMMARY

    def dpo_ckpt(self, t: int) -> Path:
        return self.iteration(t) / "dpo" / "ckpt"

    def dpo_tb(self, t: int) -> Path:
        return self.iteration(t) / "dpo" / "tb"

    # -- models and their evaluations, by model number --------------------------------------------------------
    def model(self, k: int) -> Path:
        """Where M(k) is trained to: ``sft/model`` for M1, ``iter_<k-1>/model`` after that (M0 is the recipe's)."""
        if _positive(k, "trained model number") == 1:
            return self.root / "sft" / "model"
        return self.iteration(k - 1) / "model"

    def eval(self, k: int) -> Path:
        """The evaluation folder of M(k): ``m0/eval``, ``sft/eval``, then ``iter_<k-1>/eval``."""
        if k == 0:
            return self.root / "m0" / "eval"
        return self.model(k).parent / "eval"

    def eval_result(self, k: int) -> Path:
        return self.eval(k) / EVAL_FILE

    # -- report -----------------------------------------------------------------------------------------------
    def report(self) -> Path:
        return self.root / "report"

    def report_markdown(self) -> Path:
        return self.report() / "summary.md"

    def report_json(self) -> Path:
        return self.report() / "summary.json"

    def report_plot(self) -> Path:
        return self.report() / "accuracy_and_steps.png"

    # -- what a (partial) run holds ---------------------------------------------------------------------------
    def iterations(self) -> list[int]:
        """The iteration numbers with a folder, ascending (``iter_10`` after ``iter_9``)."""
        if not self.root.is_dir():
            return []
        found = (re.fullmatch(r"iter_([1-9]\d*)", p.name) for p in self.root.iterdir() if p.is_dir())
        return sorted(int(m.group(1)) for m in found if m)

    def evaluations(self) -> list[tuple[str, Path]]:
        """``(label, eval folder)`` of every finished evaluation, in model order: M0, M1, M2, ..."""
        numbers = [0, 1, *(t + 1 for t in self.iterations())]
        return [(f"M{k}", self.eval(k)) for k in numbers if self.eval_result(k).is_file()]

    def searches(self) -> list[tuple[str, Path]]:
        """``(iteration folder name, summary.json)`` of every finished search, in iteration order."""
        return [(self.iteration(t).name, self.search_summary(t)) for t in self.iterations()
                if self.search_summary(t).is_file()]  # fmt: skip


def _positive(n: int, what: str) -> int:
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"expected a {what} >= 1, found {n!r}")
    return n
