#!/usr/bin/env bash
# Join a worker to the Ray cluster. Usage: start_worker.sh HEAD_IP:6379 [NUM_GPUS]
set -euo pipefail
if [[ $# -lt 1 ]]; then
  echo "usage: $0 HEAD_IP:6379 [NUM_GPUS]" >&2
  exit 2
fi
HEAD="$1"
NUM_GPUS="${2:-8}"
ray start --address "$HEAD" --num-gpus "$NUM_GPUS"
