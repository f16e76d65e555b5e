#!/usr/bin/env bash
# Submit a whole PSR recipe run as one Ray job, the way upstream submits its CLIs:
#   ray job submit --address http://HEAD:8265 --runtime-env-json '{"working_dir": "."}' -- python -m openrlhf.cli...
# Usage: submit.sh RECIPE.yaml [--set KEY=VALUE ...]
#
# The job runs in Ray's unpacked copy of WORKING_DIR, so it is told the directory this script was run from
# (OPENRLHF_PSR_BASE_DIR): the recipe's relative data paths and the runs dir are resolved against it, not against
# the copy. Put the runs dir on storage every node shares (RUNS_DIR, else the recipe's cluster.runs_dir, else
# ./runs); a second submit of the same recipe resumes from it, also after a code change.
# Environment: RAY_ADDRESS (default http://127.0.0.1:8265), WORKING_DIR (default: the repository root), RUNS_DIR.
set -euo pipefail
if [[ $# -lt 1 ]]; then
  echo "usage: $0 RECIPE.yaml [--set KEY=VALUE ...]" >&2
  exit 2
fi
RECIPE="$1"
shift
if [[ ! -f "$RECIPE" ]]; then
  echo "$0: recipe $RECIPE does not exist (relative to $(pwd))" >&2
  exit 2
fi
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd -P)"
BASE_DIR="$(pwd -P)"
RAY_ADDRESS="${RAY_ADDRESS:-http://127.0.0.1:8265}"
WORKING_DIR="$(cd "${WORKING_DIR:-$ROOT}" && pwd -P)"
# The recipe as the job sees it: inside its copy of the working dir when it lies there, else by absolute path.
RECIPE_ABS="$(cd "$(dirname "$RECIPE")" && pwd -P)/$(basename "$RECIPE")"
case "$RECIPE_ABS" in
  "$WORKING_DIR"/*) JOB_RECIPE="${RECIPE_ABS#"$WORKING_DIR"/}" ;;
  *) JOB_RECIPE="$RECIPE_ABS" ;;
esac
RUN_ARGS=()
if [[ -n "${RUNS_DIR:-}" ]]; then
  RUN_ARGS=(--runs-dir "$(cd "$BASE_DIR" && mkdir -p "$RUNS_DIR" && cd "$RUNS_DIR" && pwd -P)")
fi
RUNTIME_ENV=$(python3 -c 'import json, sys
print(json.dumps({"working_dir": sys.argv[1],
                  "env_vars": {"OPENRLHF_PSR_COMPAT": "auto", "OPENRLHF_PSR_BASE_DIR": sys.argv[2],
                               "PYTHONUNBUFFERED": "1"}}))' \
  "$WORKING_DIR" "$BASE_DIR")
ray job submit --address "$RAY_ADDRESS" --runtime-env-json "$RUNTIME_ENV" -- \
  python -m openrlhf_psr.cli.main run "$JOB_RECIPE" ${RUN_ARGS[@]+"${RUN_ARGS[@]}"} --set resources.launcher=local "$@"
