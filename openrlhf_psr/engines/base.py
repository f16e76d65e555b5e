"""One small generation interface, token-in token-out, that every engine implements.

The search hands prompts as token ids and gets token ids back, so the ids that reach DPO are exactly the ids the
model produced (no re-tokenisation of joined strings). One call carries the whole batch: every problem's candidate
request (``n`` samples each) or every judge prompt, so the engine can batch and share prefixes.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import MutableMapping, Sequence
from dataclasses import dataclass

# vLLM's CPU backend keeps cores out of its worker's OpenMP threads for the engine's scheduler process
# (``VLLM_CPU_NUM_OF_RESERVED_CPU``, default one per worker). On a 2-core machine that is half the compute: the
# worker ran on core 0 alone ("core ids=[0]"). Given both, the same engine decoded 2.3x and scored prompt log-probs
# 2.9x faster (SmolLM2-135M, 48 prompts; measured 2026-11-28), the scheduler sharing a core without harm. Measured
# on 2 cores only; up to this many usable cores a reserved one costs at least a quarter of the compute.
SMALL_HOST_CORES = 4
RESERVED_CPU_ENV = "VLLM_CPU_NUM_OF_RESERVED_CPU"


# vLLM runs its engine core in a second process (and, on CPU, its worker in a third), each importing torch and vLLM
# again before the engine can start: 21.7 s per engine start on this 2-core machine against 10.3 s with the engine in
# the caller's process (imports included), at the same tokens/s within noise, and in-process the greedy outputs were
# the same in every run (SmolLM2-135M, 200 prompts of 160 tokens; bench/bench_engine_start.py, README). Four engines
# start in the demo. On GPU the second process overlaps the scheduler's work with the GPU's, so it is left there.
# Upstream's own engines run in-process when asked for full determinism (``RolloutRayActor``:
# ``VLLM_ENABLE_V1_MULTIPROCESSING=0``).
ENGINE_PROCESS_ENV = "VLLM_ENABLE_V1_MULTIPROCESSING"


def keep_engine_in_process(environ: MutableMapping[str, str] | None = None) -> bool:
    """Run vLLM's engine core in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``) unless the variable is already
    set. For CPU engines only; must run before the engine starts. Returns whether it set the variable.

    >>> env = {}
    >>> keep_engine_in_process(env), env
    (True, {'VLLM_ENABLE_V1_MULTIPROCESSING': '0'})
    >>> keep_engine_in_process({ENGINE_PROCESS_ENV: "1"})
    False
    """
    environ = os.environ if environ is None else environ
    if ENGINE_PROCESS_ENV in environ:
        return False
    environ[ENGINE_PROCESS_ENV] = "0"
    return True


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def claim_reserved_cpu_cores(environ: MutableMapping[str, str] | None = None, cores: int | None = None) -> bool:
    """On a host with at most :data:`SMALL_HOST_CORES` usable cores, let vLLM's CPU worker compute on all of them
    (``VLLM_CPU_NUM_OF_RESERVED_CPU=0``) unless the variable is already set. Must run before the engine starts (its
    processes inherit the environment). Returns whether it set the variable. Only vLLM's CPU platform reads it.

    >>> env = {}
    >>> claim_reserved_cpu_cores(env, cores=2), env
    (True, {'VLLM_CPU_NUM_OF_RESERVED_CPU': '0'})
    >>> claim_reserved_cpu_cores({}, cores=32), claim_reserved_cpu_cores({RESERVED_CPU_ENV: "1"}, cores=2)
    (False, False)
    """
    environ = os.environ if environ is None else environ
    cores = usable_cores() if cores is None else cores
    if RESERVED_CPU_ENV in environ or cores > SMALL_HOST_CORES:
        return False
    environ[RESERVED_CPU_ENV] = "0"
    return True


@dataclass(frozen=True)
class SampleRequest:
    """``n`` samples continuing ``prompt_token_ids``."""

    prompt_token_ids: tuple[int, ...]
    n: int = 1
    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: int = 256
    stop: tuple[str, ...] = ()
    seed: int | None = None
    affinity: str | None = None  # requests with the same key go to the same engine of a multi-engine generator


@dataclass(frozen=True)
class Sample:
    """One generated continuation. ``finish_reason`` is vLLM's ("stop" or "length"); ``stop_reason`` is the stop
    string that matched, a stop token id, or None for EOS."""

    text: str
    token_ids: tuple[int, ...]
    finish_reason: str
    stop_reason: str | int | None = None


class UnsupportedByEngine(NotImplementedError):
    """This engine cannot do what was asked (score given tokens, read next-token log-probs of given tokens): a
    capability it lacks, not an unfinished method. Judges catch it and fall back (the logit judge to its transformers
    forward) or name the generator that can."""


class Engine(ABC):
    """Generates for a batch of requests in one call. ``tokenizer`` is the model's HF tokenizer."""

    tokenizer = None
    max_model_len: int | None = None  # prompt + generated tokens the engine holds per sequence; None: not known
    # A progress bar on stderr for each call (requests finished of all). The evaluation turns it on for its few long
    # calls (greedy solutions of a benchmark, a judge set); the search's many short calls keep it off and show its
    # own bar. Engines without one ignore it.
    progress: bool = False

    @abstractmethod
    def generate(self, requests: Sequence[SampleRequest]) -> list[list[Sample]]:
        """One list of ``request.n`` samples per request, in request order."""

    def continuation_logprobs(self, items: Sequence[tuple[Sequence[int], Sequence[int]]]) -> list[list[float]]:
        """For each ``(context ids, continuation ids)``: the log-probability of every continuation token given the
        context and the continuation tokens before it (teacher forcing), all items in one batched call.

        Used by judges that score given text instead of generating (the likelihood judge). An engine that cannot
        score a prompt raises :class:`UnsupportedByEngine`; the in-process ``vllm`` engine can.
        """
        raise UnsupportedByEngine(
            f"{type(self).__name__} cannot score given continuations (prompt log-probs); use the 'vllm' generator"
        )

    def next_token_logprobs(
        self, prompts: Sequence[Sequence[int]], token_ids: Sequence[int], *, affinity: Sequence[str | None] = ()
    ) -> list[list[float]]:
        """For each prompt: the log-probability (softmax over the whole vocabulary, fp32) of each of ``token_ids``
        as the next token, all prompts in one batched call; ``affinity`` (one key per prompt, optional) pins
        prompts to engines as ``SampleRequest.affinity`` does.

        Used by the logit judge (P("A") vs P("B") at the verdict position, read from the generation engine, so no
        second copy of the model). Prompts that share a prefix reuse the engine's prefix cache. An engine that
        cannot return logprobs of given tokens raises :class:`UnsupportedByEngine` (the logit judge then falls back
        to a transformers forward).
        """
        raise UnsupportedByEngine(f"{type(self).__name__} cannot return next-token log-probs of given tokens")

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the engine's resources."""


def to_vllm_params(request: SampleRequest):
    """vLLM ``SamplingParams`` for a request (vLLM imported lazily: the interface stays light).

    ``output_kind=FINAL_ONLY``: an async engine (upstream's ``RolloutRayActor.generate`` keeps only the last
    streamed ``RequestOutput``) would otherwise return just the last finished of the ``n`` samples.
    """
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    return SamplingParams(
        output_kind=RequestOutputKind.FINAL_ONLY,
        n=request.n,
        temperature=request.temperature,
        top_p=request.top_p,
        max_tokens=request.max_tokens,
        stop=list(request.stop) or None,
        seed=request.seed,
        include_stop_str_in_output=False,
    )


def next_token_params(token_ids: Sequence[int]):
    """vLLM ``SamplingParams`` that score ``token_ids`` as the next token: one greedy token generated (discarded)
    and ``logprob_token_ids``, so every asked token is returned whatever its rank (a top-K list could miss "B").

    vLLM reads these as raw log-probs: ``log_softmax`` in fp32 of the model's logits, before any sampling setting.
    """
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    return SamplingParams(
        output_kind=RequestOutputKind.FINAL_ONLY, n=1, temperature=0.0, max_tokens=1,
        logprob_token_ids=list(token_ids), detokenize=False,
    )  # fmt: skip


def read_next_token_logprobs(output, token_ids: Sequence[int]) -> list[float]:
    """The log-probs of ``token_ids`` from a ``RequestOutput`` of :func:`next_token_params`."""
    [position] = output.outputs[0].logprobs[:1]
    return [float(position[t].logprob) for t in token_ids]


def from_vllm_output(output) -> list[Sample]:
    return [Sample(c.text, tuple(c.token_ids), c.finish_reason or "length", c.stop_reason) for c in output.outputs]


class CountingEngine(Engine):
    """Wraps an engine and counts calls, requests, sequences and generated tokens (for statistics and benches)."""

    def __init__(self, inner: Engine):
        self.inner = inner
        self.tokenizer = inner.tokenizer
        self.max_model_len = getattr(inner, "max_model_len", None)
        self.calls = self.requests = self.sequences = self.generated_tokens = self.scored_tokens = 0
        self.scored_prompts = 0  # prompts scored by next_token_logprobs (logit judge comparisons)

    def generate(self, requests: Sequence[SampleRequest]) -> list[list[Sample]]:
        out = self.inner.generate(requests)
        self.calls += 1
        self.requests += len(requests)
        self.sequences += sum(len(o) for o in out)
        self.generated_tokens += sum(len(s.token_ids) for o in out for s in o)
        return out

    def continuation_logprobs(self, items):
        out = self.inner.continuation_logprobs(items)
        self.calls += 1
        self.scored_tokens += sum(len(c) for _, c in items)
        return out

    def next_token_logprobs(self, prompts, token_ids, *, affinity=()):
        out = self.inner.next_token_logprobs(prompts, token_ids, affinity=affinity)
        self.calls += 1
        self.scored_prompts += len(prompts)
        return out

    def close(self) -> None:
        self.inner.close()
