"""The pairwise-judge reward file against OpenRLHF's contract for ``--reward.remote_url FILE.py``: upstream's agent
loads ``reward_func(queries, prompts, labels)`` from the file and reads tensors out of the returned dict (the logic
alone, without torch: tests/unit/test_judges_and_registry.py)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

from openrlhf_psr.judges.base import Judgment, PairwiseJudge
from openrlhf_psr.records import Verdict

pytestmark = pytest.mark.integration


class LongerIsBetter(PairwiseJudge):
    def judge(self, comparisons):
        return [Judgment(Verdict("A" if len(c.step_a) > len(c.step_b) else "B")) for c in comparisons]


def test_the_file_upstream_loads_returns_one_tensor_reward_per_query(monkeypatch):
    import torch

    path = subprocess.run([sys.executable, "-m", "openrlhf_psr.cli.main", "reward-file"], capture_output=True,
                          text=True, check=True, timeout=120).stdout.strip()  # fmt: skip
    # as openrlhf.utils.agent loads it: a module from a file path, then its reward_func
    spec = importlib.util.spec_from_file_location("reward_func", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "_JUDGE", LongerIsBetter())
    out = module.reward_func(["<s>Q a long detailed answer<|im_end|>", "Q x"], ["Q", "Q"], ["medium ref"] * 2)
    assert set(out) == {"rewards", "scores", "extra_logs"}
    assert isinstance(out["rewards"], torch.Tensor) and out["rewards"].tolist() == [1.0, 0.0]
    assert all(isinstance(v, torch.Tensor) and v.shape == (2,) for v in out["extra_logs"].values())
