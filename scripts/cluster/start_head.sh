#!/usr/bin/env bash
# Start the Ray head node (as upstream OpenRLHF's examples do). Usage: start_head.sh [NUM_GPUS] [RAY START OPTIONS...]
# Options after NUM_GPUS go to `ray start` as they are and win over the defaults here (e.g. --port, --dashboard-port,
# --temp-dir, --block: the CI test starts a second head beside a running one this way).
# The node's address is Ray's own pick, or HEAD_IP when set. Not 0.0.0.0 as upstream's examples have it: with Ray
# 2.55 the dashboard agent then binds 0.0.0.0 and 127.0.0.1 on the same port, fails, and no job can be submitted.
set -euo pipefail
NUM_GPUS="${1:-8}"
shift || true
IP_ARGS=()
if [[ -n "${HEAD_IP:-}" ]]; then
  IP_ARGS=(--node-ip-address "$HEAD_IP")
fi
ray start --head ${IP_ARGS[@]+"${IP_ARGS[@]}"} --num-gpus "$NUM_GPUS" --dashboard-host 0.0.0.0 --dashboard-port 8265 "$@"
echo "head started; workers: scripts/cluster/start_worker.sh <HEAD_IP>:6379 [NUM_GPUS]"
