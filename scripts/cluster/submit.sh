#!/usr/bin/env bash
# Submit a whole PSR recipe run as one Ray job, the way upstream submits its CLIs:
#   ray job submit --address http://HEAD:8265 --runtime-env-json '{"working_dir": "."}' -- python -m openrlhf.cli...
# Inside the job the stages run as local processes on the job's node (deepspeed --num_gpus N for training, vLLM
# for search and evaluation). Usage: submit.sh RECIPE.yaml [--set KEY=VALUE ...]
# Environment: RAY_ADDRESS (default http://127.0.0.1:8265), WORKING_DIR (default: the repository root).
set -euo pipefail
if [[ $# -lt 1 ]]; then
  echo "usage: $0 RECIPE.yaml [--set KEY=VALUE ...]" >&2
  exit 2
fi
RECIPE="$1"
shift
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
RAY_ADDRESS="${RAY_ADDRESS:-http://127.0.0.1:8265}"
WORKING_DIR="${WORKING_DIR:-$ROOT}"
RUNTIME_ENV=$(printf '{"working_dir": "%s", "env_vars": {"OPENRLHF_PSR_COMPAT": "auto"}}' "$WORKING_DIR")
ray job submit --address "$RAY_ADDRESS" --runtime-env-json "$RUNTIME_ENV" -- \
  python -m openrlhf_psr.cli.main run "$RECIPE" --set resources.launcher=local "$@"
