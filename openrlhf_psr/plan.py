"""Will a recipe fit its cluster? Memory per GPU and host RAM per node for every kind of stage, before anything runs.

A 72B run that dies of out-of-memory after an hour of model loading costs GPU-hours; this module answers with
arithmetic in milliseconds, from the model's shape and the recipe's ``cluster`` section, and refuses with the knob
to turn. It imports nothing heavy. Units: GB = 1e9 bytes (as GPUs are labelled; an "80 GB" card has a little more).

The model (bf16 weights, Adam; Rajbhandari et al., ZeRO, with K = 12 bytes of optimizer state per parameter:
fp32 master weights, momentum and variance), for Φ parameters over N = nodes x gpus_per_node data-parallel ranks:

==================  ==============  ==============  ==============  ==============
per GPU             ZeRO-0          ZeRO-1          ZeRO-2          ZeRO-3
==================  ==============  ==============  ==============  ==============
weights             2Φ              2Φ              2Φ              2Φ/N
gradients           2Φ              2Φ              2Φ/N            2Φ/N
optimizer states    12Φ             12Φ/N           12Φ/N           12Φ/N
==================  ==============  ==============  ==============  ==============

``adam_offload`` moves the optimizer states to host RAM (plus an fp32 copy of the gradient shard, 4Φ/N, for the CPU
Adam step): ``gpus_per_node x 16Φ/N`` pinned bytes per node. Activations with micro batch b and length s
(T = b·s tokens), bf16: with gradient checkpointing, every layer's input (L·T·h·2) plus one layer recomputed with
its gradients (2 · T·(4h + 2·kv + 4i)·2: norm output, q, o-proj input/output, k and v, gate, up, activation and
product); without it, every layer's activations (L·T·(5h + 2·kv + 4i)·2). Logits cost 10 bytes per position and
vocabulary entry (bf16 logits, their fp32 copy and its gradient): upstream SFT computes them at every position,
step DPO only at the two steps' positions (``trainers/shared_prefix.py``), plus its (b, s, s) tree mask (4 bytes
per entry while built). ZeRO-3 gathers one layer at a time and prefetches the next, plus the embedding:
2·(2·layer + V·h) bytes. Every process adds a fixed runtime overhead (CUDA context, NCCL buffers, allocator slack).

The step-DPO reference: ``live`` is a DeepSpeed inference engine (ZeRO-3 shards it, 2Φ/N, or ``ref_offload`` puts
its shard in host RAM; below ZeRO-3 each GPU holds 2Φ); ``cached`` (default) loads the whole reference with
``from_pretrained`` on every rank and moves it to that rank's GPU (2Φ per GPU, 2Φ per rank of host RAM while
loading) before training starts.

vLLM (search, evaluation): each engine's weights are split over its tensor-parallel GPUs (2Φ/TP); the KV cache gets
``gpu_memory_utilization x GPU - weights/TP - overhead`` and must hold at least one ``max_model_len`` sequence;
one token costs 2 (K and V) x L x ceil(kv_heads/TP) x head_dim x 2 bytes per GPU.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from openrlhf_psr.errors import UserError

GB = 1e9
BF16 = 2
ADAM_BYTES = 12  # fp32 master weights + momentum + variance, per parameter
OFFLOAD_GRAD_BYTES = 4  # fp32 gradient shard that CPU Adam reads, per parameter
LOGIT_BYTES = 10  # bf16 logits + fp32 copy + fp32 gradient, per position and vocabulary entry
RUNTIME_OVERHEAD_GB = 3.0  # CUDA context, NCCL buffers, allocator fragmentation, per GPU process
VLLM_OVERHEAD_GB = 4.0  # vLLM's profiled activations, CUDA graphs and sampler buffers, per GPU
HOST_PER_PROCESS_GB = 4.0  # python + torch + CUDA libraries, per process on a node


class PlanError(UserError, ValueError):
    """The plan cannot be made (unknown model shape, inconsistent cluster)."""


@dataclass(frozen=True)
class ModelShape:
    """What memory depends on. ``qkv_bias``: Qwen2 has biases on q, k and v; Llama has none."""

    name: str
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    tied: bool
    qkv_bias: bool = True
    head_dim: int | None = None

    @property
    def dim(self) -> int:
        return self.head_dim or self.hidden // self.heads

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.dim

    @property
    def layer_params(self) -> int:
        """One decoder layer: q, k, v (with biases for Qwen2), o; gate, up, down; two norms."""
        h, q = self.hidden, self.heads * self.dim
        attn = h * q + 2 * h * self.kv_dim + q * h + ((q + 2 * self.kv_dim) if self.qkv_bias else 0)
        return attn + 3 * h * self.intermediate + 2 * h

    @property
    def params(self) -> int:
        """Every parameter: embeddings, layers, final norm, and the output head unless tied.

        >>> KNOWN_SHAPES["qwen2.5-math-7b"].params, KNOWN_SHAPES["smollm2-135m"].params
        (7615616512, 134515008)
        """
        embed = self.vocab * self.hidden
        return embed * (1 if self.tied else 2) + self.layers * self.layer_params + self.hidden

    def lora_params(self, rank: int) -> int:
        """LoRA's trainable parameters on every linear layer of the decoder (upstream's ``all-linear``, which leaves
        the output head alone): an adapter on a d_in -> d_out projection holds rank x (d_in + d_out).

        >>> KNOWN_SHAPES["smollm2-135m"].lora_params(16)
        4884480
        """
        h, q, kv, i = self.hidden, self.heads * self.dim, self.kv_dim, self.intermediate
        per_layer = (h + q) + 2 * (h + kv) + (q + h) + 2 * (h + i) + (i + h)
        return rank * self.layers * per_layer

    def kv_bytes_per_token(self, tp: int = 1) -> int:
        """KV cache bytes one token costs on each GPU of a TP group (KV heads are replicated when TP > heads)."""
        return 2 * self.layers * math.ceil(self.kv_heads / tp) * self.dim * BF16


def _qwen(name, hidden, intermediate, layers, heads, kv_heads, vocab, tied):
    return ModelShape(name, hidden, intermediate, layers, heads, kv_heads, vocab, tied)


# Shapes from each model's published config.json, so that `plan` needs no hub.
KNOWN_SHAPES: dict[str, ModelShape] = {
    "qwen2.5-math-7b": _qwen("Qwen2.5-Math-7B", 3584, 18944, 28, 28, 4, 152064, False),
    "qwen2.5-math-72b": _qwen("Qwen2.5-Math-72B", 8192, 29568, 80, 64, 8, 152064, False),
    "qwen2.5-0.5b": _qwen("Qwen2.5-0.5B", 896, 4864, 24, 14, 2, 151936, True),
    "qwen2.5-1.5b": _qwen("Qwen2.5-1.5B", 1536, 8960, 28, 12, 2, 151936, True),
    "smollm2-135m": ModelShape("SmolLM2-135M", 576, 1536, 30, 9, 3, 49152, True, qkv_bias=False),
}
_ALIASES = {"default": "smollm2-135m"}


def shape_from_config(config: dict, name: str = "model") -> ModelShape:
    """A :class:`ModelShape` from a Hugging Face ``config.json`` (decoder-only, Llama/Qwen2 layout)."""
    try:
        heads = int(config["num_attention_heads"])
        return ModelShape(
            name=name,
            hidden=int(config["hidden_size"]),
            intermediate=int(config["intermediate_size"]),
            layers=int(config["num_hidden_layers"]),
            heads=heads,
            kv_heads=int(config.get("num_key_value_heads") or heads),
            vocab=int(config["vocab_size"]),
            tied=bool(config.get("tie_word_embeddings", False)),
            qkv_bias=bool(config.get("attention_bias", config.get("model_type") == "qwen2")),
            head_dim=config.get("head_dim"),
        )
    except KeyError as exc:
        raise PlanError(f"{name}: config.json has no {exc.args[0]!r}: not a decoder-only model plan knows") from None


def model_shape(name_or_path: str) -> ModelShape:
    """The shape of a local model folder (its config.json), else of a known model by its last name component."""
    folder = Path(name_or_path)
    if (folder / "config.json").is_file():
        return shape_from_config(json.loads((folder / "config.json").read_text()), str(folder))
    key = name_or_path.rstrip("/").rsplit("/", 1)[-1].lower().removesuffix("-instruct")
    key = _ALIASES.get(key, key)
    if key in KNOWN_SHAPES:
        return KNOWN_SHAPES[key]
    raise PlanError(
        f"model {name_or_path!r}: no local config.json and not a known shape ({', '.join(KNOWN_SHAPES)}): "
        "point `model` at a local folder with config.json"
    )


# -- the hardware and the per-stage settings ------------------------------------------------------------------


@dataclass(frozen=True)
class Hardware:
    nodes: int
    gpus_per_node: int
    gpu_memory_gb: float
    host_memory_gb: float

    @property
    def gpus(self) -> int:
        return self.nodes * self.gpus_per_node


@dataclass(frozen=True)
class TrainSettings:
    zero_stage: int = 2
    adam_offload: bool = False
    ref_offload: bool = False
    gradient_checkpointing: bool = False
    micro_batch_size: int = 1
    max_len: int = 4096
    scored_tokens: int | None = None  # positions whose logits are computed per row (None: all, as upstream SFT)
    reference: str | None = None  # step DPO: "cached" or "live"; None: no reference (SFT)
    tree_mask: bool = False
    lora_rank: int = 0  # --ds.lora.rank: gradients and Adam states for the adapters only


@dataclass
class Line:
    what: str
    gb: float


@dataclass
class StagePlan:
    """One kind of stage: its memory per GPU and host RAM per node, and why it does not fit (if it does not)."""

    stage: str
    applies_to: list[str]
    gpu: list[Line] = field(default_factory=list)
    host: list[Line] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    refusals: list[str] = field(default_factory=list)
    gpu_limit_gb: float = 0.0
    host_limit_gb: float = 0.0

    @property
    def gpu_gb(self) -> float:
        return sum(line.gb for line in self.gpu)

    @property
    def host_gb(self) -> float:
        return sum(line.gb for line in self.host)

    @property
    def fits(self) -> bool:
        return not self.refusals


def zero_states_gb(
    params: int, world: int, zero_stage: int, adam_offload: bool, trainable: int | None = None
) -> dict[str, float]:
    """Weights, gradients and Adam states per GPU, and offloaded bytes per GPU process on the host, in GB.
    ``trainable``: the parameters that get gradients and Adam states (LoRA's adapters), when not all of them.

    >>> {k: round(v, 3) for k, v in zero_states_gb(10**9, 8, 3, False).items()}
    {'weights': 0.25, 'gradients': 0.25, 'optimizer': 1.5, 'host_optimizer': 0.0}
    >>> {k: round(v, 3) for k, v in zero_states_gb(10**9, 8, 2, True).items()}
    {'weights': 2.0, 'gradients': 0.25, 'optimizer': 0.0, 'host_optimizer': 2.0}
    >>> {k: round(v, 3) for k, v in zero_states_gb(10**9, 8, 2, False, trainable=8 * 10**6).items()}
    {'weights': 2.0, 'gradients': 0.002, 'optimizer': 0.012, 'host_optimizer': 0.0}
    """
    weights = BF16 * params / GB / (world if zero_stage >= 3 else 1)
    p = (params if trainable is None else trainable) / GB
    gradients = BF16 * p / (world if zero_stage >= 2 else 1)
    optimizer = ADAM_BYTES * p / (world if zero_stage >= 1 else 1)
    host = 0.0
    if adam_offload:
        host = optimizer + OFFLOAD_GRAD_BYTES * p / (world if zero_stage >= 1 else 1)
        optimizer = 0.0
    return {"weights": weights, "gradients": gradients, "optimizer": optimizer, "host_optimizer": host}


def activations_gb(shape: ModelShape, tokens: int, checkpointing: bool) -> float:
    """Training activations of one micro batch of ``tokens`` tokens, bf16 (see the module docstring)."""
    h, i, kv = shape.hidden, shape.intermediate, shape.kv_dim
    if checkpointing:
        return (shape.layers * tokens * h * BF16 + 2 * tokens * (4 * h + 2 * kv + 4 * i) * BF16) / GB
    return shape.layers * tokens * (5 * h + 2 * kv + 4 * i) * BF16 / GB


def plan_training(stage: str, applies_to: list[str], shape: ModelShape, hw: Hardware, s: TrainSettings) -> StagePlan:
    knob = "dpo" if s.reference else "sft"
    if hw.gpus == 0:  # CPU: one process whose "device" memory is host RAM
        cpu = plan_training(stage, applies_to, shape, Hardware(hw.nodes, 1, hw.host_memory_gb, hw.host_memory_gb), s)
        cpu.host, cpu.gpu, cpu.gpu_limit_gb = cpu.gpu + cpu.host[1:], [], 0.0
        cpu.notes.append("no GPUs: one CPU process; every line is host RAM")
        cpu.refusals = (
            []
            if cpu.host_gb <= hw.host_memory_gb
            else [
                f"needs {cpu.host_gb:.1f} GB of host RAM of {hw.host_memory_gb:g}: lower {knob}.micro_batch_size or "
                "max_len, or use a smaller model"
            ]
        )
        return cpu
    out = StagePlan(stage, applies_to, gpu_limit_gb=hw.gpu_memory_gb, host_limit_gb=hw.host_memory_gb)
    world = hw.gpus
    trainable = shape.lora_params(s.lora_rank) if s.lora_rank else None
    states = zero_states_gb(shape.params, world, s.zero_stage, s.adam_offload, trainable)
    lora_note = f", LoRA rank {s.lora_rank}: {trainable / 1e6:.1f}M parameters" if trainable else ""
    out.gpu += [
        Line(f"weights (bf16, ZeRO-{s.zero_stage})", states["weights"]),
        Line(f"gradients (bf16{lora_note})", states["gradients"]),
        Line(f"Adam states (fp32 x3{lora_note})" + (" -> host" if s.adam_offload else ""), states["optimizer"]),
    ]
    if s.reference == "live":
        if s.zero_stage >= 3 and s.ref_offload:
            out.host.append(
                Line("reference shards (ref_offload)", hw.gpus_per_node * BF16 * shape.params / world / GB)
            )
        else:
            ref = BF16 * shape.params / GB / (world if s.zero_stage >= 3 else 1)
            out.gpu.append(Line("reference (live" + (", ZeRO-3)" if s.zero_stage >= 3 else ", replicated)"), ref))
            if s.ref_offload:
                out.notes.append("ref_offload needs ZeRO-3 (upstream's eval config shards only at stage 3)")
    tokens = s.micro_batch_size * s.max_len
    out.gpu.append(
        Line(
            f"activations ({s.micro_batch_size} x {s.max_len} tokens, "
            f"{'gradient checkpointing' if s.gradient_checkpointing else 'no checkpointing'})",
            activations_gb(shape, tokens, s.gradient_checkpointing),
        )
    )
    scored = s.micro_batch_size * (s.scored_tokens if s.scored_tokens is not None else s.max_len)
    out.gpu.append(
        Line(f"logits ({scored} scored positions x {shape.vocab} vocabulary)", scored * shape.vocab * LOGIT_BYTES / GB)
    )
    if s.tree_mask:
        out.gpu.append(Line("tree attention mask", s.micro_batch_size * s.max_len**2 * 4 / GB))
    if s.zero_stage >= 3:
        out.gpu.append(
            Line(
                "ZeRO-3 gathered layers + embedding", BF16 * (2 * shape.layer_params + shape.vocab * shape.hidden) / GB
            )
        )
    out.gpu.append(Line("runtime overhead", RUNTIME_OVERHEAD_GB))

    out.host.append(Line(f"{hw.gpus_per_node} processes", hw.gpus_per_node * HOST_PER_PROCESS_GB))
    if s.adam_offload:
        out.host.append(
            Line("Adam states + fp32 gradients (adam_offload)", hw.gpus_per_node * states["host_optimizer"])
        )
    if s.zero_stage < 3:
        out.host.append(
            Line("model load (every rank builds the full bf16 model)", hw.gpus_per_node * BF16 * shape.params / GB)
        )
    if s.lora_rank and stage == "dpo":  # train_step_dpo merges the adapters into M(t) on rank 0's host at the end
        # (SFT's merge is a stage of its own, sft_merge, after training has let go of the host's memory)
        out.host.append(Line("LoRA merge (rank 0 loads M(t) in bf16)", BF16 * shape.params / GB))

    if out.gpu_gb > hw.gpu_memory_gb:
        out.refusals.append(
            f"needs {out.gpu_gb:.1f} GB per GPU of {hw.gpu_memory_gb:g}: "
            + _training_gpu_knob(out, shape, hw, s, knob)
        )
    if out.host_gb > hw.host_memory_gb:
        need = math.ceil(
            hw.nodes
            * (out.host_gb - hw.gpus_per_node * HOST_PER_PROCESS_GB)
            / (hw.host_memory_gb - hw.gpus_per_node * HOST_PER_PROCESS_GB)
        )
        out.refusals.append(
            f"needs {out.host_gb:.1f} GB of host RAM per node of {hw.host_memory_gb:g}: "
            + (
                f"raise cluster.nodes to {need} (host states shard over every node) or cluster.host_memory_gb"
                if s.zero_stage >= 1 and (s.adam_offload or s.ref_offload)
                else f"set cluster.{knob}.zero_stage: 3 (ZeRO-3 loads the model sharded)"
            )
        )
    return out


def _training_gpu_knob(out: StagePlan, shape: ModelShape, hw: Hardware, s: TrainSettings, knob: str) -> str:
    """The first knob, in order of how much it gives for how little it costs, that is not turned yet."""
    if s.zero_stage < 3:
        return f"set cluster.{knob}.zero_stage: 3 (weights, gradients and Adam states sharded over {hw.gpus} GPUs)"
    if not s.adam_offload:
        return f"set cluster.{knob}.adam_offload: true (Adam states, 12 bytes per parameter, to host RAM)"
    if s.reference == "live" and not s.ref_offload:
        return "set cluster.dpo.ref_offload: true (the reference's shard to host RAM)"
    if not s.gradient_checkpointing:
        return f"set cluster.{knob}.gradient_checkpointing: true"
    if s.micro_batch_size > 1:
        return f"lower {'dpo' if knob == 'dpo' else 'stages.sft'}.micro_batch_size (now {s.micro_batch_size})"
    sharded = sum(line.gb for line in out.gpu if line.what.startswith(("weights", "gradients", "reference")))
    fixed = out.gpu_gb - sharded
    if fixed < hw.gpu_memory_gb and sharded > 0:
        nodes = math.ceil(hw.nodes * sharded / (hw.gpu_memory_gb - fixed))
        return f"raise cluster.nodes to {nodes} (sharded states per GPU shrink with the GPU count)"
    return f"lower {knob}.max_len (now {s.max_len}) or use GPUs with more memory (cluster.gpu_memory_gb)"


def plan_cached_reference(
    stage: str, applies_to: list[str], shape: ModelShape, hw: Hardware, s: TrainSettings
) -> StagePlan:
    """The pass before step-DPO training that computes the reference log-probs once (``--psr.reference cached``)."""
    if hw.gpus == 0:  # CPU: one process whose "device" memory is host RAM
        cpu = plan_cached_reference(stage, applies_to, shape, Hardware(hw.nodes, 1, hw.host_memory_gb, 1e9), s)
        cpu.host, cpu.gpu, cpu.gpu_limit_gb = cpu.gpu + cpu.host, [], 0.0
        cpu.host_limit_gb = hw.host_memory_gb  # the inner call's host limit was a placeholder
        cpu.refusals = (
            []
            if cpu.host_gb <= hw.host_memory_gb
            else [f"needs {cpu.host_gb:.1f} GB of host RAM of {hw.host_memory_gb:g}: use a smaller model"]
        )
        return cpu
    out = StagePlan(stage, applies_to, gpu_limit_gb=hw.gpu_memory_gb, host_limit_gb=hw.host_memory_gb)
    out.gpu.append(Line("reference (whole bf16 model on each rank's GPU)", BF16 * shape.params / GB))
    out.gpu.append(
        Line(
            "forward of one micro batch (no gradients)",
            s.micro_batch_size * s.max_len * shape.hidden * BF16 * 4 / GB
            + s.micro_batch_size * (s.scored_tokens or s.max_len) * shape.vocab * 6 / GB,
        )
    )
    if s.tree_mask:
        out.gpu.append(Line("tree attention mask", s.micro_batch_size * s.max_len**2 * 4 / GB))
    out.gpu.append(Line("runtime overhead", RUNTIME_OVERHEAD_GB))
    out.host.append(Line(f"{hw.gpus_per_node} processes", hw.gpus_per_node * HOST_PER_PROCESS_GB))
    out.host.append(Line("from_pretrained on every rank (bf16)", hw.gpus_per_node * BF16 * shape.params / GB))
    if out.gpu_gb > hw.gpu_memory_gb or out.host_gb > hw.host_memory_gb:
        out.refusals.append(
            f"needs {out.gpu_gb:.1f} GB per GPU and {out.host_gb:.1f} GB of host RAM per node: the cached reference "
            "loads the whole model on every rank; set psr.trainer.settings.reference: live (a ZeRO-3 sharded "
            "reference, with cluster.dpo.ref_offload: true to keep it in host RAM)"
        )
    return out


def plan_vllm(
    stage: str,
    applies_to: list[str],
    shape: ModelShape,
    hw: Hardware,
    engines: int | None,
    tp: int,
    utilization: float,
    max_model_len: int,
    knob: str,
) -> StagePlan:
    out = StagePlan(stage, applies_to, gpu_limit_gb=hw.gpu_memory_gb * utilization, host_limit_gb=hw.host_memory_gb)
    if hw.gpus == 0:
        out.gpu_limit_gb = 0.0
        out.notes.append("no GPUs: the vLLM CPU backend (VLLM_CPU_KVCACHE_SPACE sizes its cache)")
        return out
    engines = engines or max(1, hw.gpus // tp)
    out.notes.append(f"{engines} engine(s) x TP {tp} = {engines * tp} of {hw.gpus} GPUs")
    if tp > hw.gpus_per_node:
        out.refusals.append(
            f"TP {tp} spans nodes ({hw.gpus_per_node} GPUs each): lower cluster.{knob}.tensor_parallel_size"
        )
    if engines * tp > hw.gpus:
        out.refusals.append(
            f"{engines} x TP {tp} needs {engines * tp} GPUs of {hw.gpus}: lower cluster.{knob}.engines"
        )
    weights = BF16 * shape.params / tp / GB
    out.gpu.append(Line(f"weights (bf16 / TP {tp})", weights))
    out.gpu.append(Line("vLLM overhead (activations, CUDA graphs)", VLLM_OVERHEAD_GB))
    room = hw.gpu_memory_gb * utilization - weights - VLLM_OVERHEAD_GB
    per_token = shape.kv_bytes_per_token(tp)
    tokens = int(max(room, 0) * GB // per_token)
    if room > 0:
        out.gpu.append(Line(f"KV cache ({tokens:,} tokens, {per_token:,} bytes each)", room))
        out.notes.append(f"KV cache holds {tokens // max_model_len} sequences of {max_model_len} tokens per engine")
    if tokens < max_model_len:
        need_tp = next(
            (
                t
                for t in (2, 4, 8, 16)
                if t > tp
                and t <= hw.gpus_per_node
                and hw.gpu_memory_gb * utilization - BF16 * shape.params / t / GB - VLLM_OVERHEAD_GB
                >= max_model_len * shape.kv_bytes_per_token(t) / GB
            ),
            None,
        )
        hint = f"raise cluster.{knob}.tensor_parallel_size to {need_tp}" if need_tp else "use GPUs with more memory"
        out.refusals.append(
            f"weights {weights:.1f} GB per GPU leave room for {tokens} KV tokens, fewer than "
            f"psr.generator.max_model_len {max_model_len}: {hint}"
        )
    return out


# -- from a recipe --------------------------------------------------------------------------------------------


def passthrough_flag(flags: dict, name: str, default):
    """An upstream pass-through flag as the launcher will pass it (it comes after ours, so it wins)."""
    for key in (name, name.removeprefix("--")):
        if key in flags and flags[key] is not None:
            value = flags[key]
            if isinstance(default, bool):
                return value is True or str(value).lower() in ("true", "1")
            return type(default)(value)
    return default


def hardware(recipe) -> Hardware:
    c = recipe.cluster
    gpus = recipe.resources.num_gpus if c.gpus_per_node is None else c.gpus_per_node
    return Hardware(c.nodes, gpus, c.gpu_memory_gb, c.host_memory_gb)


def training_settings(recipe, stage: str) -> TrainSettings:
    """The DeepSpeed settings a training stage will run with: the cluster section, then ``openrlhf:`` flags."""
    spec, flags = getattr(recipe.cluster, stage), recipe.openrlhf.get(stage, {})
    hp = recipe.stages.sft if stage == "sft" else recipe.dpo
    dpo = stage == "dpo"
    return TrainSettings(
        zero_stage=passthrough_flag(flags, "--ds.zero_stage", spec.zero_stage),
        adam_offload=passthrough_flag(flags, "--ds.adam_offload", spec.adam_offload),
        ref_offload=dpo and passthrough_flag(flags, "--ref.offload", spec.ref_offload),
        gradient_checkpointing=passthrough_flag(
            flags, "--model.gradient_checkpointing_enable", spec.gradient_checkpointing
        ),
        micro_batch_size=passthrough_flag(flags, "--train.micro_batch_size", hp.micro_batch_size),
        max_len=hp.max_len,
        # step DPO scores the two steps only; SRLM pairs are whole solutions: count every position
        scored_tokens=2 * recipe.psr.search.max_tokens_per_step if dpo and recipe.psr.method == "psr" else None,
        reference=str(recipe.psr.trainer.settings.get("reference", "cached")) if dpo else None,
        tree_mask=dpo,
        lora_rank=passthrough_flag(flags, "--ds.lora.rank", 0),
    )


IN_PROCESS_GENERATORS = ("vllm",)  # one vllm.LLM in the stage's own process: one engine


def engine_settings(recipe, stage: str) -> dict:
    """The engine settings of a search or evaluation stage: ``psr.generator.settings`` with the cluster section's
    engines, TP and memory share on top (the launcher hands exactly these to the stage's generator plugin).

    Search and evaluation (with its test-time scaling and judges) build their engine through the same generator
    plugin, each with its own ``cluster.<stage>`` engines x TP; an in-process generator takes no engine count.
    """
    spec = getattr(recipe.cluster, stage)
    settings = dict(recipe.psr.generator.settings)
    tp = spec.tensor_parallel_size or recipe.psr.generator.settings.get("tensor_parallel_size")
    if tp:
        settings["tensor_parallel_size"] = int(tp)
    total_gpus = hardware(recipe).gpus
    if recipe.psr.generator.name not in IN_PROCESS_GENERATORS and (spec.engines or total_gpus):
        settings["num_engines"] = spec.engines or max(1, total_gpus // int(tp or 1))  # as plan_vllm counts them
    if spec.gpu_memory_utilization is not None:
        settings["gpu_memory_utilization"] = spec.gpu_memory_utilization
    return settings


def _plan_engines(recipe, stage: str, applies_to: list[str], shape: ModelShape, hw: Hardware) -> StagePlan:
    settings = engine_settings(recipe, stage)
    tp = int(settings.get("tensor_parallel_size", 1))
    in_process = recipe.psr.generator.name in IN_PROCESS_GENERATORS
    engines = 1 if in_process else settings.get("num_engines")
    utilization = float(settings.get("gpu_memory_utilization", 0.9))
    out = plan_vllm(stage, applies_to, shape, hw, engines, tp, utilization, recipe.psr.generator.max_model_len, stage)
    if in_process and hw.gpus > tp:
        out.notes.append(
            f"in-process vLLM: {hw.gpus - tp} of {hw.gpus} GPUs idle (psr.generator.name: openrlhf_ray puts "
            "engines on all)"
        )
    return out


def plan_recipe(recipe) -> list[StagePlan]:
    """Every kind of stage the recipe runs, with its memory."""
    shape, hw = model_shape(recipe.model), hardware(recipe)
    iters = [f"iter_{t}" for t in range(1, recipe.stages.iterations + 1)]
    ev = recipe.data.eval
    out: list[StagePlan] = []
    if ev.benchmarks or ev.judge_sets:
        names = (["eval_m0"] if ev.before_training else []) + (["eval_m1"] if recipe.stages.sft.enabled else [])
        out.append(_plan_engines(recipe, "eval", names + [f"{i}/eval" for i in iters], shape, hw))
    if recipe.stages.sft.enabled:
        out.append(plan_training("sft", ["sft"], shape, hw, training_settings(recipe, "sft")))
    if iters:
        out.append(_plan_engines(recipe, "search", [f"{i}/search" for i in iters], shape, hw))
        dpo = training_settings(recipe, "dpo")
        if dpo.reference == "cached":
            out.append(plan_cached_reference("dpo (reference pass)", [f"{i}/dpo" for i in iters], shape, hw, dpo))
        out.append(plan_training("dpo", [f"{i}/dpo" for i in iters], shape, hw, dpo))
    return out


def format_plan(recipe, plans: list[StagePlan]) -> str:
    shape, hw = model_shape(recipe.model), hardware(recipe)
    lines = [
        f"{recipe.name}: {shape.name}, {shape.params / 1e9:.2f}B parameters; {hw.nodes} node(s) x "
        f"{hw.gpus_per_node} GPU(s) of {hw.gpu_memory_gb:g} GB, {hw.host_memory_gb:g} GB host RAM per node"
    ]
    for p in plans:
        verdict = "fits" if p.fits else "DOES NOT FIT"
        gpu = f"{p.gpu_gb:.1f} GB per GPU (limit {p.gpu_limit_gb:.1f}), " if p.gpu_limit_gb else "CPU only, "
        lines.append(
            f"\n[{p.stage}] {verdict}: {gpu}{p.host_gb:.1f} GB host RAM per node (limit {p.host_limit_gb:g})"
            f"  -- {', '.join(p.applies_to)}"
        )
        lines += [f"  gpu   {line.gb:8.2f} GB  {line.what}" for line in p.gpu]
        lines += [f"  host  {line.gb:8.2f} GB  {line.what}" for line in p.host]
        lines += [f"  note  {note}" for note in p.notes]
        lines += [f"  REFUSED: {refusal}" for refusal in p.refusals]
    return "\n".join(lines)
