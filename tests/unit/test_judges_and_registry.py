"""Judges built by name, the outcome judge, and the HTTP engine's client logic (against a local test server)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from openrlhf_psr.engines.base import Engine, Sample, SampleRequest
from openrlhf_psr.judges.base import Comparison, JudgeContext, PairwiseJudge, build_judge
from openrlhf_psr.judges.outcome import OutcomeJudge
from openrlhf_psr.registry import JUDGES, Registry, RegistryError, load_import_string
from openrlhf_psr.testing import CharTokenizer, send_json

pytestmark = pytest.mark.unit


def test_registry_rejects_duplicates_and_suggests_names():
    reg = Registry("things", {"alpha": "json:dumps"})
    reg.register("beta")(object)
    with pytest.raises(RegistryError, match="already registered"):
        reg.register("beta")(object)
    with pytest.raises(RegistryError, match="already registered"):
        reg.register("alpha")(object)
    with pytest.raises(RegistryError, match="did you mean 'alpha'"):
        reg.get("alpah")
    assert reg.get("alpha") is json.dumps and reg.get("json:loads") is json.loads


def test_import_strings_name_what_is_wrong():
    with pytest.raises(RegistryError, match="no attribute 'nope'"):
        load_import_string("json:nope")
    with pytest.raises(RegistryError, match="cannot import module"):
        load_import_string("no_such_module_xyz:thing")
    with pytest.raises(RegistryError, match="module:attr"):
        load_import_string("json")


def test_builtin_judges_are_registered_by_name():
    assert {"generative", "logit", "outcome"} <= set(JUDGES.names())
    assert issubclass(JUDGES.get("outcome"), PairwiseJudge)


class RolloutEngine(Engine):
    """Rollouts that reach the gold answer 3/4 of the time after a 'good' step and 1/4 after a 'bad' one."""

    def __init__(self):
        self.tokenizer = CharTokenizer()
        self.calls = 0

    def generate(self, requests):
        self.calls += 1
        out = []
        for r in requests:
            prefix = self.tokenizer.decode(r.prompt_token_ids)
            right = 3 if prefix.rstrip().endswith("good") else 1
            out.append([Sample(f"\\boxed{{{7 if k < right else 8}}}", (1,), "stop") for k in range(r.n)])
        return out


def test_outcome_judge_prefers_the_step_that_reaches_the_gold_answer_and_caches_rollouts():
    engine = RolloutEngine()
    judge = build_judge("outcome", JudgeContext(model="m", engine=engine), rollouts=4)
    assert isinstance(judge, OutcomeJudge)
    good_first = Comparison("q", (), "Step 1: good", "Step 1: bad", gold="7")
    bad_first = Comparison("q", (), "Step 1: bad", "Step 1: good", gold="7")
    same = Comparison("q", (), "Step 1: good", "Step 1: good", gold="7")
    a, b, tie = judge.judge([good_first, bad_first, same])
    assert a.verdict.winner == "A" and b.verdict.winner == "B" and tie.verdict.winner is None
    assert a.verdict.p_a == pytest.approx(0.75) and b.verdict.p_a == pytest.approx(0.25)
    judge.judge([good_first])
    assert engine.calls == 2  # second call: everything cached, the engine got an empty batch
    with pytest.raises(ValueError, match="gold answer"):
        judge.judge([Comparison("q2", (), "x", "y")])


def test_unknown_judge_name_is_a_clear_error():
    with pytest.raises(RegistryError, match="unknown judges 'logitt'.*did you mean 'logit'"):
        build_judge("logitt", JudgeContext(model="m"))


class _Handler(BaseHTTPRequestHandler):
    requests_seen: list = []
    fail_first = [True]

    def do_POST(self):  # noqa: N802 - http.server API
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.fail_first[0]:
            self.fail_first[0] = False
            self.send_response(503)
            self.end_headers()
            return
        self.requests_seen.append((self.path, body))
        text = "".join(chr(i) for i in body["prompt"])[::-1]
        choices = [
            {
                "index": k,
                "text": text,
                "token_ids": [ord(c) for c in text],
                "finish_reason": "stop",
                "stop_reason": None,
            }
            for k in range(body["n"])
        ]
        send_json(self, {"choices": choices})

    def log_message(self, *args):
        pass


def test_http_engine_sends_token_ids_and_retries_a_failed_request():
    from openrlhf_psr.engines.openai_http import OpenAIHTTPEngine

    server = HTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        engine = OpenAIHTTPEngine(
            f"http://127.0.0.1:{server.server_port}", model="m", tokenizer=CharTokenizer(), retries=2
        )
        out = engine.generate([SampleRequest(tuple(map(ord, "abc")), n=2, stop=("\nStep ",), seed=3)])
    finally:
        server.shutdown()
    assert [s.text for s in out[0]] == ["cba", "cba"] and out[0][0].token_ids == tuple(map(ord, "cba"))
    path, body = _Handler.requests_seen[-1]
    assert path == "/v1/completions" and body["prompt"] == [97, 98, 99] and body["stop"] == ["\nStep "]
    assert body["seed"] == 3 and body["return_token_ids"] is True and engine.approx_ids == 0


class AlwaysAJudge(PairwiseJudge):
    def judge(self, comparisons):
        from openrlhf_psr.judges.base import Judgment
        from openrlhf_psr.tournament import Verdict

        return [Judgment(Verdict("A")) for _ in comparisons]


class LongerIsBetter(PairwiseJudge):
    def judge(self, comparisons):
        from openrlhf_psr.judges.base import Judgment
        from openrlhf_psr.tournament import Verdict

        return [Judgment(Verdict("A" if len(c.step_a) > len(c.step_b) else "B")) for c in comparisons]


def test_pairwise_rewards_cancel_position_bias_and_follow_the_judge():
    """The reward file's logic, without torch (its tensor contract: tests/integration/test_reward_file.py)."""
    from openrlhf_psr.rewards.pairwise_reward import pairwise_rewards, response_of

    response = response_of("<s>Q<|im_end|>Step 1: 4<|im_end|>", "Q")
    assert response == "Step 1: 4"
    assert pairwise_rewards(AlwaysAJudge(), ["Q"], [response], ["Step 1: four"]) == [0.5]
    responses = [response_of(q, "Q") for q in ("Q a long detailed answer", "Q x")]
    assert pairwise_rewards(LongerIsBetter(), ["Q", "Q"], responses, ["medium ref", "medium ref"]) == [1.0, 0.0]


def test_reward_function_builds_its_judge_from_the_environment(monkeypatch):
    import openrlhf_psr.rewards.pairwise_reward as rf

    monkeypatch.setattr(rf, "_JUDGE", None)
    monkeypatch.setenv("PSR_REWARD_JUDGE", f"{__name__}:LongerIsBetter")
    assert isinstance(rf._judge(), LongerIsBetter)


class ScoreEngine(Engine):
    """Solutions 'good'/'bad'; the scoring 'model' gives good 5 and bad 1, once unparseable."""

    def __init__(self):
        self.tokenizer = CharTokenizer()

    def generate(self, requests):
        out = []
        for r in requests:
            prompt = self.tokenizer.decode(r.prompt_token_ids)
            if "Score: <points>" in prompt:
                score = "5" if "GOOD" in prompt else "1"
                out.append([Sample(f"Score: {score}" if k else "no idea", (1,), "stop") for k in range(r.n)])
            else:
                texts = ["GOOD \\boxed{7}", "bad", "bad", "GOOD \\boxed{7}"]
                out.append([Sample(t, tuple(map(ord, t)), "stop") for t in texts[: r.n]])
        return out


def test_srlm_baseline_pairs_best_against_worst_whole_solution(tmp_path):
    from openrlhf_psr.data.problems import Problem
    from openrlhf_psr.io import ShardStore
    from openrlhf_psr.srlm import SRLMConfig, srlm_pairs

    n_pairs, n_problems = srlm_pairs(ScoreEngine(), [Problem("p", "q", "7")], tmp_path, SRLMConfig())
    assert (n_pairs, n_problems) == (1, 1)
    [pair] = ShardStore(tmp_path).read("pairs")
    assert pair["chosen"].startswith("GOOD") and pair["rejected"] == "bad" and pair["scores"] == [5.0, 1.0]
    assert pair["chosen_ids"][-1] == 0 and pair["chosen_is_final"]  # a whole solution ends with EOS
    assert srlm_pairs(ScoreEngine(), [Problem("p", "q", "7")], tmp_path) == (0, 0)  # resumed: nothing to redo
