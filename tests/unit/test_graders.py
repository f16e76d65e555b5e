"""Graders on hard gold/prediction pairs, both reported; hostile answers are a recorded timeout of the grader they
hang, within the deadline, from the main thread, a worker thread and other processes; one grader's timeout keeps the
other's verdict; the Qwen-compatible normalisations (redundant braces, ``\\text{}`` units)."""

from __future__ import annotations

import doctest
import json
import multiprocessing
import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from openrlhf_psr import grading
from openrlhf_psr.grading import grade_answer, grade_pairs, graders, is_correct
from openrlhf_psr.grading.graders import grade, grade_all, qwen_equal

pytestmark = pytest.mark.unit

DEADLINE_S = 1.0  # for answers that must time out: a hang is a hang, whatever the load
# For answers that must get a verdict: far above their grading time (under 0.8 s unloaded), so that a loaded
# machine (a fresh grader child forked after a timeout, paged in under load) cannot turn a verdict into a timeout.
VERDICT_DEADLINE_S = 10.0
# math-verify needs over 5 s for BRACED_FIVE, the Qwen grader 0.03 s: a deadline between the two, with room for load
SPLIT_DEADLINE_S = 3.0
BOUND_S = 5 * DEADLINE_S  # generous: the point is "returns", not how fast

EQUAL = [
    ("0.5", "\\frac{1}{2}"),  # fraction vs decimal
    ("\\dfrac{3}{4}", "0.75"),
    ("50\\%", "0.5"),  # percent variants
    ("50", "50\\%"),
    ("1,000", "1000"),  # thousands separator
    ("\\$18.00", "18"),  # currency, trailing zeros
    ("(1, 2]", "(1,2]"),  # interval
    ("\\{3, 1\\}", "\\{1,3\\}"),  # set: unordered
    ("2, 3", "3, 2"),  # multiple answers, any order
    ("\\text{5 dollars}", "5"),  # \text{} and units
    ("12 cm", "12"),
    ("x = 5", "5"),
    ("\\sqrt{8}", "2\\sqrt{2}"),  # symbolic
    ("x^2+2x+1", "(x+1)^2"),
    ("\\frac{\\pi}{2}", "\\pi/2"),
    ("\\text{(B)}", "B"),  # multiple choice
    ("90^\\circ", "90"),
]
DIFFERENT = [
    ("7", "8"),
    ("[1,2)", "(1,2)"),  # open vs closed interval end
    ("(1, 2)", "(2, 1)"),  # ordered tuple
    ("1, 2", "1, 2, 3"),  # missing element
    ("0.5001", "0.5"),  # beyond the relative tolerance
    ("\\sqrt{2}", "2"),
]
# The Qwen2.5-Math harness ignores braces in its comparison and drops units (a trailing \text{}, unit words).
QWEN_NORMALISATIONS = [
    ("{{18}}", "18", True),  # redundant braces, repeatedly
    ("{18}", "18", True),
    ("\\{18\\}", "18", True),  # a braced single element, as the harness compares it
    ("{{\\frac{1}{2}}}", "0.5", True),
    ("x = {{18}}", "18", True),
    ("\\text{18 apples}", "18", True),  # a quantity inside \text{}
    ("\\mbox{18 apples}", "18", True),
    ("\\text{5 square feet}", "5", True),
    ("18\\text{ cm}", "18", True),  # a trailing unit group
    ("18 \\text{apples}", "18", True),
    ("18\\mbox{ cm}", "18", True),
    ("18\\text{ cm}^2", "18", True),
    ("18\\,\\mathrm{cm}", "18", True),
    ("\\text{18}\\text{ apples}", "18", True),
    ("\\$\\text{18 dollars}", "18", True),
    ("\\text{Devon}", "\\text{Devon}", True),  # text that is the answer stays the answer
    ("{{18}}", "19", False),  # ... and none of it makes a wrong answer right
    ("18\\text{ cm}", "19", False),
    ("\\text{18 apples}", "81", False),
    ("\\{1,2\\}", "1", False),  # a set of two is not its first element
    ("\\text{3 x}", "3", False),  # a variable is not a unit
    ("2\\mathrm{e}", "2", False),
    ("\\text{Devon}", "\\text{Kevin}", False),
]

# Hostile answers against the gold "5", each grader under DEADLINE_S: the exact record. Hangs are far longer than
# the deadline (measured: none of them ends within 8 s), fast ones far shorter (under 0.8 s), so outcomes are stable.
BOTH = ("math_verify", "qwen")
TIMEOUT_BOTH = {"math_verify": None, "qwen": None, "timeouts": ["math_verify", "qwen"]}
WRONG = {"math_verify": False, "qwen": False, "timeouts": []}
BOMBS = [
    # the example; the Qwen grader rejects it in about 0.6 s, too close to a 1 s deadline to assert on
    pytest.param(
        "9^{9^{9^{9^{9}}}}", ("math_verify",), {"math_verify": None, "timeouts": ["math_verify"]}, id="power-tower-5"
    ),
    pytest.param("9^{9^{9^{9}}}", BOTH, TIMEOUT_BOTH, id="power-tower-4"),
    pytest.param("2^{2^{30}}", BOTH, TIMEOUT_BOTH, id="power-of-power"),
    pytest.param("10^{10^{8}}", BOTH, TIMEOUT_BOTH, id="hundred-million-digits"),
    pytest.param("(10^{10})!", BOTH, TIMEOUT_BOTH, id="huge-factorial"),
    pytest.param("(x+1)^{100000}", BOTH, TIMEOUT_BOTH, id="slow-sympy-expand"),
    pytest.param("\\prod_{k=1}^{10^{7}} k", BOTH, TIMEOUT_BOTH, id="slow-sympy-product"),
    pytest.param("\\sin(10^{10^{10}})", BOTH, TIMEOUT_BOTH, id="slow-sympy-sin"),
    pytest.param("100000!", BOTH, WRONG, id="large-factorial-is-just-wrong"),
    pytest.param("\\frac{" * 100 + "1" + "}" * 100, BOTH, WRONG, id="deep-frac-nesting"),
    pytest.param("\\frac{" * 400 + "1" + "}" * 400, BOTH, WRONG, id="deeper-frac-nesting-too-long"),
    pytest.param("\\boxed{" * 20_000, BOTH, WRONG, id="100k-chars"),
    pytest.param("9" * 100_000, BOTH, WRONG, id="100k-digits"),
]
TOWER = "9^{9^{9^{9^{9}}}}"  # hangs math-verify (is_correct's grader)
HANGS_BOTH = "9^{9^{9^{9}}}"
# math-verify needs over 5 s for this, the Qwen grader strips the braces at once: the test of independent verdicts
BRACED_FIVE = "{" * 400 + "5" + "}" * 400


@pytest.fixture(scope="module", autouse=True)
def warm_pool():
    """Start the pool's supervisors once, so the timings below are of grading, not of start-up."""
    grade_pairs([("1", "1")])


def test_doctests():
    assert doctest.testmod(graders).failed == 0
    assert doctest.testmod(grading).failed == 0


@pytest.mark.parametrize(("prediction", "gold"), EQUAL)
def test_equal_pairs(prediction, gold):
    assert qwen_equal(prediction, gold)


@pytest.mark.parametrize(("prediction", "gold"), DIFFERENT)
def test_different_pairs(prediction, gold):
    assert not qwen_equal(prediction, gold)


@pytest.mark.parametrize(("prediction", "gold", "equal"), QWEN_NORMALISATIONS)
def test_qwen_normalisations(prediction, gold, equal):
    assert qwen_equal(prediction, gold) is equal


def test_olympiadbench_style_list_answers():
    assert qwen_equal("\\frac{1}{2}, 3", "3,\\frac12")
    assert not qwen_equal("\\frac{1}{2}", "3,\\frac12")


def test_both_graders_are_reported_and_disagreements_listed():
    result = grade_all(["\\frac{1}{2}", "7", "2, 3", "3"], ["0.5", "8", "3, 2", None])
    assert [g["qwen"] for g in result["grades"]] == [True, False, True, None]
    assert result["grades"][0]["math_verify"] is True and result["grades"][1]["math_verify"] is False
    listed = {d["index"] for d in result["disagreements"]}
    assert listed == {k for k, g in enumerate(result["grades"][:3]) if g["math_verify"] != g["qwen"]}
    assert set(result["accuracy"]) == {"math_verify", "qwen"} and result["accuracy"]["qwen"] == 2 / 3  # 3 known
    assert result["timeouts"] == {"math_verify": 0, "qwen": 0}


@pytest.mark.parametrize(("hostile", "names", "expected"), BOMBS)
def test_grader_bombs_on_the_main_thread(hostile, names, expected):
    deadline = DEADLINE_S if expected["timeouts"] else VERDICT_DEADLINE_S
    start = time.monotonic()
    assert grade_answer(hostile, "5", graders=names, deadline_s=deadline) == expected
    assert time.monotonic() - start < 5 * deadline


def test_is_correct_on_a_bomb_from_a_worker_thread_returns_within_the_deadline():
    """The case that hung: math-verify's alarm is off on a thread, and the hung call holds the GIL."""
    out = []
    thread = threading.Thread(target=lambda: out.append(is_correct(TOWER, "5", timeout_s=DEADLINE_S)))
    start = time.monotonic()
    thread.start()
    thread.join(BOUND_S)
    assert not thread.is_alive() and out == [False] and time.monotonic() - start < BOUND_S


def test_concurrent_threads_do_not_wait_for_one_another():
    """More threads than supervisors, all on bombs: each returns its own timeout within the bound."""
    answers = [HANGS_BOTH, "(10^{10})!", "2^{2^{30}}"]
    out: dict[int, tuple[dict, float]] = {}

    def work(k: int) -> None:
        start = time.monotonic()
        out[k] = (grade_answer(answers[k], "5", deadline_s=DEADLINE_S), time.monotonic() - start)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(len(answers))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(2 * BOUND_S)  # one more supervisor may have to start (not part of the deadline)
    assert sorted(out) == [0, 1, 2]
    for record, seconds in out.values():
        assert record == TIMEOUT_BOTH and seconds < 2 * BOUND_S


def _forked_child(conn) -> None:
    start = time.monotonic()
    verdict = is_correct(TOWER, "5", timeout_s=DEADLINE_S)
    conn.send((verdict, time.monotonic() - start, is_correct("\\frac{1}{2}", "0.5"), os.getpid()))


def test_from_a_forked_daemonic_child_process():
    """A forked child (here daemonic, which multiprocessing forbids to have children) gets its own pool, never its
    parent's supervisors, and the deadline holds there too (its start-up included, hence the double bound)."""
    ctx = multiprocessing.get_context("fork")
    parent_end, child_end = ctx.Pipe()
    child = ctx.Process(target=_forked_child, args=(child_end,), daemon=True)
    child.start()
    assert parent_end.poll(30), "the forked child did not answer"
    verdict, seconds, ok, _ = parent_end.recv()
    child.join(10)
    assert (verdict, ok) == (False, True) and seconds < 2 * BOUND_S
    assert grade_answer("0.5", "\\frac{1}{2}") == {
        "math_verify": True,
        "qwen": True,
        "timeouts": [],
    }  # ours still work


def test_from_another_process_and_nothing_left_behind_at_exit():
    script = textwrap.dedent(f"""
        import json, time
        from openrlhf_psr.grading import get_pool, grade_answer, is_correct
        grade_answer("1", "1")  # start-up, not part of the deadline
        start = time.monotonic()
        record = grade_answer({HANGS_BOTH!r}, "5", deadline_s={DEADLINE_S})
        seconds = time.monotonic() - start
        pids = [s.proc.pid for s in get_pool()._idle]
        print(json.dumps({{"record": record, "seconds": seconds, "ok": is_correct("0.5", "1/2"), "pids": pids}}))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["record"] == TIMEOUT_BOTH and out["seconds"] < BOUND_S and out["ok"] is True
    assert out["pids"]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(pid) for pid in out["pids"]):
        time.sleep(0.1)
    assert not any(_alive(pid) for pid in out["pids"]), "supervisors outlived the process that started them"


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_one_graders_timeout_keeps_the_others_verdict():
    assert grade(BRACED_FIVE, "5", time_limit_s=SPLIT_DEADLINE_S) == {
        "math_verify": None,
        "qwen": True,
        "timeouts": ["math_verify"],
    }
    result = grade_all([BRACED_FIVE, "5"], ["5", "5"], time_limit_s=SPLIT_DEADLINE_S)
    assert result["accuracy"] == {"math_verify": 0.5, "qwen": 1.0}  # a timeout counts as wrong
    assert result["timeouts"] == {"math_verify": 1, "qwen": 0} and result["disagreements"] == []


def test_evaluation_records_each_graders_verdict_and_the_headline_grader():
    from openrlhf_psr.data.problems import Problem
    from openrlhf_psr.eval.generate import score_solutions

    problems = [Problem("a", "q", "5"), Problem("b", "q", "5"), Problem("c", "q", None)]
    texts = [f"Step 1: \\boxed{{{BRACED_FIVE}}}", "Step 1: \\boxed{{{18}}}", "Step 1: \\boxed{3}"]
    out = score_solutions(problems, texts, headline="qwen", deadline_s=SPLIT_DEADLINE_S)
    m, records = out["metrics"], out["records"]
    assert records[0]["grades"] == {"math_verify": None, "qwen": True, "timeouts": ["math_verify"]}
    assert records[1]["grades"] == {"math_verify": False, "qwen": False, "timeouts": []}
    assert records[2]["grades"] == {"math_verify": None, "qwen": None, "timeouts": []}
    assert [r["correct"] for r in records] == [True, False, None]  # the headline grader's verdicts
    assert m["accuracy_grader"] == "qwen" and m["accuracy"] == 0.5
    assert m["accuracy_math_verify"] == 0.0 and m["accuracy_qwen"] == 0.5
    assert m["grading_timeouts"] == {"math_verify": 1, "qwen": 0} and m["grading_deadline_s"] == SPLIT_DEADLINE_S
    with pytest.raises(ValueError, match="headline grader 'best'"):
        score_solutions(problems, texts, headline="best")


def test_batched_grading_reports_progress_and_rejects_unknown_graders():
    seen = []
    records = grade_pairs([("1", "1"), ("2", "3")], progress=lambda done, total: seen.append((done, total)))
    assert [r["qwen"] for r in records] == [True, False] and seen[-1] == (4, 4) and len(seen) == 4
    with pytest.raises(ValueError, match="graders \\['sympy'\\]"):
        grade_pairs([("1", "1")], graders=("sympy",))
    with pytest.raises(ValueError, match="deadline_s=0"):
        grade_pairs([("1", "1")], deadline_s=0)


def test_pool_survives_timeouts_and_keeps_its_supervisors():
    """A timeout replaces the grader child, not the supervisor: no interpreter start-up after a bomb."""
    pool = grading.get_pool()
    grade_pairs([("1", "1")] * 4)
    before = sorted(s.proc.pid for s in pool._idle)
    assert grade_pairs([(HANGS_BOTH, "5"), ("(10^{10})!", "5")], deadline_s=DEADLINE_S) == [TIMEOUT_BOTH] * 2
    assert sorted(s.proc.pid for s in pool._idle) == before
    assert grade_answer("\\frac{1}{2}", "0.5") == {"math_verify": True, "qwen": True, "timeouts": []}


def test_processes_killed_while_idle_are_replaced_without_losing_a_verdict():
    """A supervisor or a grader child killed from outside (the OOM killer, a user) between tasks: the next grading
    starts a new one and gives a real verdict, not a timeout."""
    import signal

    pool = grading.get_pool()
    grade_pairs([("1", "1")] * 4)
    supervisor_pid = pool._idle[0].proc.pid
    with open(f"/proc/{supervisor_pid}/task/{supervisor_pid}/children") as f:
        grader_pid = int(f.read().split()[0])
    os.kill(grader_pid, signal.SIGKILL)  # the grader child of one supervisor
    os.killpg(pool._idle[-1].proc.pid, signal.SIGKILL)  # another supervisor, whole group
    time.sleep(0.2)
    expected = {"math_verify": True, "qwen": True, "timeouts": []}
    assert grade_pairs([("0.5", "\\frac{1}{2}")] * 3) == [expected] * 3
