#!/usr/bin/env bash
# Start the Ray head node (as upstream OpenRLHF's examples do). Usage: start_head.sh [NUM_GPUS]
set -euo pipefail
NUM_GPUS="${1:-8}"
ray start --head --node-ip-address 0.0.0.0 --num-gpus "$NUM_GPUS" --dashboard-host 0.0.0.0 --dashboard-port 8265
echo "head started; workers: scripts/cluster/start_worker.sh <HEAD_IP>:6379 [NUM_GPUS]"
