"""Answer grading in a pool of worker processes, with a per-answer deadline that holds from any thread and any process.

Model output is untrusted: it is parsed, never evaluated. Some of it is hostile to a grader: a power tower
(``9^{9^{9^{9^{9}}}}``), ``(10^{10})!`` or ``(x+1)^{100000}`` sends sympy into one long C call that holds the GIL.
math-verify bounds its own time with ``signal.alarm``, which works only on a process's main thread; on any other
thread the hung call cannot be interrupted, and it holds the GIL, so the caller cannot even ``join(timeout)`` it.
Only a separate process can be stopped, so every grading runs in one, and a hung one is killed.

The pool, one per process, created on first use and shut down at exit:

- each *slot* is a **supervisor**: a fresh interpreter (``python -c``, not ``fork``), so it inherits no thread,
  lock or CUDA/vLLM/Ray state of the caller, and, unlike multiprocessing's ``spawn`` and ``forkserver``, it does not
  re-import the caller's ``__main__`` nor refuse to start inside a daemonic process. It imports the graders once
  (about a second) and ``fork``\\ s a **grader** child from that single-threaded state;
- the supervisor hands the grader one task at a time (one answer, one grader) and waits for the verdict until the
  deadline; past it, it kills the grader, reports a timeout, and forks a fresh grader from its already-imported
  state (milliseconds, no import to repeat);
- the caller waits on pipes (which releases the GIL) with its own backstop at deadline + ``MARGIN_S``; should a
  supervisor miss even that, its whole process group is killed and replaced.

Each grader's verdict is its own task, so one grader timing out never erases the other's verdict. A grading record
is ``{"math_verify": True | False | None, "qwen": ..., "timeouts": [...]}``: None and a name in ``timeouts`` when that
grader gave no verdict within the deadline (it hung, or its process died). An answer longer than
``MAX_ANSWER_CHARS`` or missing is wrong without grading; without a gold answer every verdict is None.
"""

from __future__ import annotations

import atexit
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from multiprocessing.connection import Connection, Pipe, wait
from pathlib import Path

MAX_ANSWER_CHARS = 1000  # longer "answers" are hostile or broken; grading them is not worth a timeout
GRADERS = ("math_verify", "qwen")
DEADLINE_S = 5.0  # per answer and grader
MARGIN_S = 5.0  # the caller's backstop beyond the deadline, should a supervisor itself stop answering (generous:
# it only catches a wedged supervisor, and a loaded machine can delay a healthy one's reply by seconds)
STARTUP_TIMEOUT_S = 120.0  # a supervisor importing the graders on a loaded 2-core machine
GRADER_MEMORY_BYTES = 4 << 30  # address space a grader may add (a 2^{2^{40}} is a MemoryError, not an OOM kill)


# -- the graders themselves (run inside the grader processes; no time limit of their own) --------------------------
def math_verify_equal(prediction: str, gold: str) -> bool:
    """math-verify's verdict, with its ``signal.alarm`` timeouts off: the pool bounds the time."""
    from math_verify import parse, verify

    try:
        gold_parsed = parse(f"${gold}$", parsing_timeout=None)
        pred_parsed = parse(f"${prediction}$", parsing_timeout=None)
        if not gold_parsed or not pred_parsed:
            return prediction.strip() == gold.strip()
        return bool(verify(gold_parsed, pred_parsed, timeout_seconds=None))
    except Exception:  # a parser failure on hostile text is a wrong answer, not a crash
        return False


def _grader_function(name: str) -> Callable[[str, str], bool]:
    if name == "math_verify":
        return math_verify_equal
    if name == "qwen":
        from openrlhf_psr.grading.graders import qwen_equal

        return qwen_equal
    raise ValueError(f"grader {name!r}: expected one of {', '.join(GRADERS)}")


def _send(conn: Connection, obj) -> None:
    conn.send_bytes(json.dumps(obj).encode())


def _recv(conn: Connection):
    return json.loads(conn.recv_bytes())


# -- inside a supervisor ------------------------------------------------------------------------------------------
def _grade_loop(conn: Connection) -> None:
    """The grader child: one task in, one verdict out, until its supervisor closes the pipe."""
    try:
        import resource

        with open("/proc/self/statm") as f:
            in_use = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        limit = in_use + GRADER_MEMORY_BYTES
        resource.setrlimit(resource.RLIMIT_AS, (limit if hard == resource.RLIM_INFINITY else min(limit, hard), hard))
    except (OSError, ValueError, ImportError):
        pass  # no /proc or no rlimits: the deadline still holds
    while True:
        try:
            task_id, name, prediction, gold = _recv(conn)
        except (EOFError, OSError):
            return
        try:
            verdict = bool(_grader_function(name)(prediction, gold))
        except Exception:  # hostile text that breaks a grader (even a MemoryError, a RecursionError) is a wrong answer
            verdict = False
        _send(conn, [task_id, verdict])


class _ForkedGrader:
    """A grader child forked from the supervisor's single-threaded, already-imported state."""

    def __init__(self, inherited: Sequence[Connection]):
        ours, theirs = Pipe()
        pid = os.fork()
        if pid == 0:  # the child never returns into the supervisor's code
            try:
                for conn in (ours, *inherited):  # the caller must see EOF when the supervisor dies
                    conn.close()
                _grade_loop(theirs)
            finally:
                os._exit(0)
        theirs.close()
        self.pid, self.conn = pid, ours

    def run(self, task_id: int, name: str, prediction: str, gold: str, deadline_s: float) -> tuple[str, bool | None]:
        try:
            _send(self.conn, [task_id, name, prediction, gold])
        except OSError:  # it died while idle (say, the OOM killer): the task never started
            return "unsent", None
        try:
            if self.conn.poll(deadline_s):
                got_id, verdict = _recv(self.conn)
                if got_id == task_id:
                    return "ok", verdict
        except (EOFError, OSError):
            return "died", None
        return "timeout", None

    def signal_kill(self) -> None:
        import signal

        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def kill(self) -> None:
        """SIGKILL and reap; reaping a grader that filled gigabytes can take a while (the kernel frees them)."""
        self.signal_kill()
        os.waitpid(self.pid, 0)
        self.conn.close()


def _supervise(read_fd: int, write_fd: int) -> None:
    """A supervisor's main loop (``python -c``): relay each task to its grader, enforcing the deadline."""
    import logging
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the caller decides when we stop (it closes the pipe)
    logging.getLogger("math_verify").setLevel(logging.ERROR)  # "timeout is disabled": the pool is the timeout
    from_caller, to_caller = Connection(read_fd, writable=False), Connection(write_fd, readable=False)
    caller = (from_caller, to_caller)
    for name in GRADERS:  # import and warm up (parsers built on first use) before forking: a fresh grader is ready
        _grader_function(name)("\\frac{1}{2}", "0.5")  # in milliseconds, also after a kill
    import latex2sympy2_extended  # noqa: F401
    import math_verify  # noqa: F401
    import sympy  # noqa: F401

    grader = _ForkedGrader(caller)
    _send(to_caller, ["ready", os.getpid()])
    while True:
        try:
            task = _recv(from_caller)
        except (EOFError, OSError):
            break
        if task is None:
            break
        task_id, name, prediction, gold, deadline_s = task
        grader = grader or _ForkedGrader(caller)
        status, verdict = grader.run(task_id, name, prediction, gold, deadline_s)
        if status == "unsent":
            grader.kill()
            grader = _ForkedGrader(caller)
            status, verdict = grader.run(task_id, name, prediction, gold, deadline_s)
        if status != "ok":
            grader.signal_kill()  # it stops at once; the reply does not wait for its memory to be freed
        try:
            _send(to_caller, [task_id, status, verdict])
        except OSError:
            break
        if status != "ok":  # after replying: the caller waits neither for the reaping nor for the fork
            grader.kill()
            grader = _ForkedGrader(caller)
    if grader is not None:
        grader.kill()


# -- in the caller ------------------------------------------------------------------------------------------------
class _Supervisor:
    """The caller's handle on one supervisor process."""

    def __init__(self):
        to_sup_r, to_sup_w = os.pipe()
        from_sup_r, from_sup_w = os.pipe()
        package_root = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
        # sympy's simplification order follows set iteration, i.e. string hashes: with a random seed the same answer
        # is graded in 0.6 s by one supervisor and hangs in another. A fixed seed makes every verdict reproducible.
        env["PYTHONHASHSEED"] = "0"
        code = "import sys; from openrlhf_psr.grading.pool import _supervise; _supervise(*map(int, sys.argv[1:]))"
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", code, str(to_sup_r), str(from_sup_w)],
                pass_fds=(to_sup_r, from_sup_w),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                env=env,
                start_new_session=True,  # its own process group: a kill reaches its grader too; no terminal ^C
            )
        finally:
            os.close(to_sup_r)
            os.close(from_sup_w)
        self.to_sup = Connection(to_sup_w, readable=False)
        self.from_sup = Connection(from_sup_r, writable=False)
        self.ready = False

    def wait_ready(self, timeout_s: float = STARTUP_TIMEOUT_S) -> None:
        if self.ready:
            return
        try:
            if self.from_sup.poll(timeout_s):
                message = _recv(self.from_sup)
                if message[0] == "ready":
                    self.ready = True
                    return
        except (EOFError, OSError):
            pass
        self.kill()
        raise RuntimeError(
            f"a grading worker ({sys.executable} -c ...openrlhf_psr.grading.pool._supervise) did not start within "
            f"{timeout_s:.0f} s (exit status {self.proc.poll()}); see its error output above"
        )

    def send(self, task: list) -> None:
        _send(self.to_sup, task)

    def recv(self):
        return _recv(self.from_sup)

    def kill(self) -> None:
        import signal

        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait()
        self._close_pipes()

    def close(self, timeout_s: float = 2.0) -> None:
        try:
            _send(self.to_sup, None)
        except OSError:
            pass
        self._close_pipes()
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()

    def _close_pipes(self) -> None:
        for conn in (self.to_sup, self.from_sup):
            if not conn.closed:
                conn.close()


def _new_record(graders: Sequence[str], value: bool | None) -> dict:
    return {**{name: value for name in graders}, "timeouts": []}


class GradingPool:
    """Supervisor processes shared by every caller of this process (see the module docstring).

    A call checks supervisors out for its own use, so callers on different threads never wait for one another: when
    none is idle a new one starts (the pool keeps at most ``size`` idle ones). Waiting for a start (the first use, or
    such an overflow) is not counted in the deadline, which bounds the grading itself.
    """

    def __init__(self, size: int | None = None):
        self.size = size or max(1, min(4, os.cpu_count() or 1))
        self._idle: list[_Supervisor] = []
        self._live = 0  # supervisors started and not yet stopped, idle or checked out
        self._lock = threading.Lock()
        self._closed = False
        self.pid = os.getpid()

    def _checkout(self, wanted: int) -> list[_Supervisor]:
        """Up to ``wanted`` supervisors: idle ones, new ones while fewer than ``size`` live, and always at least one
        (an overflow when every one is busy elsewhere)."""
        with self._lock:
            if self._closed:
                raise RuntimeError("the grading pool is shut down")
            taken = [self._idle.pop() for _ in range(min(wanted, len(self._idle)))]
            new = min(wanted - len(taken), max(0, self.size - self._live)) or (0 if taken else 1)
            self._live += new
        started = [_Supervisor() for _ in range(new)]
        try:
            for supervisor in started:
                supervisor.wait_ready()
        except BaseException:
            for supervisor in started:
                supervisor.kill()
            self._stopped(len(started))
            self._checkin(taken)
            raise
        return taken + started

    def _checkin(self, supervisors: Iterable[_Supervisor]) -> None:
        surplus = []
        with self._lock:
            for supervisor in supervisors:
                if not self._closed and len(self._idle) < self.size:
                    self._idle.append(supervisor)
                else:
                    surplus.append(supervisor)
        for supervisor in surplus:
            supervisor.close()
        self._stopped(len(surplus))

    def _stopped(self, count: int) -> None:
        with self._lock:
            self._live -= count

    def grade(
        self,
        pairs: Sequence[tuple[str | None, str | None]],
        *,
        graders: Sequence[str] = GRADERS,
        deadline_s: float = DEADLINE_S,
        progress: bool | Callable[[int, int], None] = False,
    ) -> list[dict]:
        """One record per (prediction, gold) pair, every grader a separate task with its own deadline."""
        unknown = [name for name in graders if name not in GRADERS]
        if unknown:
            raise ValueError(f"graders {unknown}: expected names from {', '.join(GRADERS)}")
        if not deadline_s > 0:
            raise ValueError(f"deadline_s={deadline_s!r}: expected a positive number of seconds")
        records = []
        task_list: list[tuple[int, str]] = []  # (pair index, grader name); a task's id is its position
        for index, (prediction, gold) in enumerate(pairs):
            if gold is None:
                records.append(_new_record(graders, None))
            elif not prediction or len(prediction) > MAX_ANSWER_CHARS:
                records.append(_new_record(graders, False))
            else:
                records.append(_new_record(graders, None))
                task_list.extend((index, name) for name in graders)
        if not task_list:
            return records
        total = len(task_list)
        report = _progress(progress, total)
        supervisors = self._checkout(min(total, self.size))
        idle = list(supervisors)
        busy: dict[Connection, tuple[_Supervisor, int, float]] = {}  # reply pipe -> (supervisor, task, due)
        done = 0

        def replace(supervisor: _Supervisor) -> None:  # one for one: the live count stays
            supervisor.kill()
            supervisors.remove(supervisor)
            replacement = _Supervisor()
            try:
                replacement.wait_ready()
            except BaseException:
                self._stopped(1)
                raise
            supervisors.append(replacement)
            idle.append(replacement)

        def give_up(supervisor: _Supervisor, task: int) -> None:
            index, name = task_list[task]
            records[index]["timeouts"].append(name)
            if next_task < total:
                replace(supervisor)
            else:  # nothing left to hand out: the next call starts a new one, this one does not wait for it
                supervisor.kill()
                supervisors.remove(supervisor)
                self._stopped(1)

        next_task = 0
        try:
            while next_task < total or busy:
                while next_task < total and idle:
                    supervisor = idle.pop()
                    index, name = task_list[next_task]
                    prediction, gold = pairs[index]
                    try:
                        supervisor.send([next_task, name, prediction, gold, deadline_s])
                    except OSError:  # it died while idle (killed from outside): the task goes to a new one
                        replace(supervisor)
                        continue
                    busy[supervisor.from_sup] = (supervisor, next_task, time.monotonic() + deadline_s + MARGIN_S)
                    next_task += 1
                soonest = min(due for _, _, due in busy.values())
                for conn in wait(list(busy), timeout=max(0.0, soonest - time.monotonic())):
                    supervisor, task, _ = busy.pop(conn)
                    try:
                        got_task, status, verdict = supervisor.recv()
                    except (EOFError, OSError, ValueError):
                        give_up(supervisor, task)
                    else:
                        index, name = task_list[task]
                        if got_task != task or status != "ok":
                            records[index]["timeouts"].append(name)
                        else:
                            records[index][name] = verdict
                        idle.append(supervisor)
                    done += 1
                    report(done)
                now = time.monotonic()
                for conn, (supervisor, task, due) in list(busy.items()):
                    if due <= now:  # the supervisor itself stopped answering: kill its whole group
                        del busy[conn]
                        give_up(supervisor, task)
                        done += 1
                        report(done)
        finally:
            for supervisor, _, _ in busy.values():  # interrupted mid-task: a late reply must not reach the next user
                supervisor.kill()
                supervisors.remove(supervisor)
            self._stopped(len(busy))
            report(None)
            self._checkin(supervisors)
        for record in records:  # in the order asked, not the order the deadlines passed
            record["timeouts"].sort(key=list(graders).index)
        return records

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
            self._live -= len(idle)
        if os.getpid() == self.pid:  # a forked child must not stop its parent's supervisors
            for supervisor in idle:
                supervisor.close()


def _progress(progress: bool | Callable[[int, int], None], total: int) -> Callable[[int | None], None]:
    """``report(done)`` after each finished task, ``report(None)`` at the end."""
    if callable(progress):
        return lambda done: progress(done, total) if done is not None else None
    if not progress:
        return lambda done: None
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc="grading", unit="grade")

    def report(done: int | None) -> None:
        if done is None:
            bar.close()
        else:
            bar.update(done - bar.n)

    return report


_POOL: GradingPool | None = None
_POOL_LOCK = threading.Lock()


def get_pool() -> GradingPool:
    """This process's pool, created on first use (a forked child gets its own, never its parent's)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None or _POOL.pid != os.getpid():
            _POOL = GradingPool()
        return _POOL


def shutdown_pool() -> None:
    """Stop this process's supervisors (also run at exit); the next grading starts a new pool."""
    global _POOL
    with _POOL_LOCK:
        pool, _POOL = _POOL, None
    if pool is not None:
        pool.close()


atexit.register(shutdown_pool)


def grade_pairs(
    pairs: Sequence[tuple[str | None, str | None]],
    *,
    graders: Sequence[str] = GRADERS,
    deadline_s: float = DEADLINE_S,
    progress: bool | Callable[[int, int], None] = False,
) -> list[dict]:
    """Grade many (prediction, gold) pairs through this process's pool.

    >>> pairs = [("\\\\frac{1}{2}", "0.5"), ("7", "8"), ("3", None), (None, "3")]
    >>> grade_pairs(pairs)  # doctest: +NORMALIZE_WHITESPACE
    [{'math_verify': True, 'qwen': True, 'timeouts': []}, {'math_verify': False, 'qwen': False, 'timeouts': []},
     {'math_verify': None, 'qwen': None, 'timeouts': []}, {'math_verify': False, 'qwen': False, 'timeouts': []}]
    """
    return get_pool().grade(pairs, graders=graders, deadline_s=deadline_s, progress=progress)


def grade_answer(
    prediction: str | None, gold: str | None, *, graders: Sequence[str] = GRADERS, deadline_s: float = DEADLINE_S
) -> dict:
    """One answer's record (see the module docstring)."""
    return grade_pairs([(prediction, gold)], graders=graders, deadline_s=deadline_s)[0]


def is_correct(prediction: str | None, gold: str | None, *, timeout_s: float = DEADLINE_S) -> bool | None:
    """math-verify's verdict: True/False when a gold answer is known (False when it timed out), None when it is not.

    Safe from any thread or process: the grading runs in the pool, bounded by ``timeout_s`` (+ ``MARGIN_S``).

    >>> is_correct("\\\\frac{1}{2}", "0.5"), is_correct("7", "8"), is_correct("3", None), is_correct(None, "3")
    (True, False, None, False)
    """
    if gold is None:
        return None
    return bool(grade_answer(prediction, gold, graders=("math_verify",), deadline_s=timeout_s)["math_verify"])
