#!/usr/bin/env bash
# Multi-node training with torchrun's c10d rendezvous. Run the same command on every node:
#
#   NNODES=2 GPUS_PER_NODE=8 MASTER_ADDR=node0.example MASTER_PORT=29500 \
#       scripts/launch_multinode.sh --model BAAI/bge-base-en-v1.5 --train-data data/ --loss infonce \
#       --batch-size 128 --grad-cache-chunk 64 [--deepspeed configs/deepspeed/zero2.json]
#
# Every argument is passed to train.py. --batch-size is per process: the global batch is
# batch-size × GPUS_PER_NODE × NNODES, and every query is contrasted with all of it (cross-device negatives).
# MASTER_ADDR must be reachable from all nodes; RDZV_ID must be the same on all of them (default: the SLURM
# job id, else "embed"). Node ranks are assigned by the rendezvous.
set -euo pipefail
NNODES=${NNODES:?set NNODES}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
MASTER_ADDR=${MASTER_ADDR:?set MASTER_ADDR (host of the rendezvous)}
MASTER_PORT=${MASTER_PORT:-29500}
RDZV_ID=${RDZV_ID:-${SLURM_JOB_ID:-embed}}
cd "$(dirname "$0")/.."
exec ${PYTHON:-python} -m torch.distributed.run \
    --nnodes "$NNODES" --nproc_per_node "$GPUS_PER_NODE" \
    --rdzv_backend c10d --rdzv_endpoint "$MASTER_ADDR:$MASTER_PORT" --rdzv_id "$RDZV_ID" \
    train.py "$@"
