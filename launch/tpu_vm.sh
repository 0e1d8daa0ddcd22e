#!/usr/bin/env bash
# Runs swirl_jax on every host of a Cloud TPU VM slice with plain gcloud.
#
#   launch/tpu_vm.sh --tpu=NAME --zone=ZONE [--project=P] [--workdir=~/swirl_jax] [--dry_run] \
#       -- --mode=pipeline --gin_file=gin/experiments/gsm8k_calculator.gin --gin.TrainConfig.steps=500
#
# Everything after `--` goes to `python -m swirl_jax.main` unchanged on every worker. Each host
# calls jax.distributed.initialize() (the TPU runtime tells it the coordinator), so one command
# on --worker=all starts one multi-host job. With --dry_run the gcloud command is printed, not run.
set -euo pipefail

tpu="" zone="" project="" workdir="~/swirl_jax" dry_run=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --tpu=*) tpu="${1#*=}" ;;
    --zone=*) zone="${1#*=}" ;;
    --project=*) project="${1#*=}" ;;
    --workdir=*) workdir="${1#*=}" ;;
    --dry_run) dry_run=1 ;;
    --) shift; break ;;
    *) echo "tpu_vm.sh: unknown option $1 (program flags go after --)" >&2; exit 2 ;;
  esac
  shift
done
[[ -n "$tpu" && -n "$zone" ]] || { echo "tpu_vm.sh: --tpu and --zone are required" >&2; exit 2; }

program="cd $workdir && JAX_PLATFORMS=tpu .venv/bin/python -m swirl_jax.main --distributed_tpu"
for arg in "$@"; do
  program+=" $(printf '%q' "$arg")"
done

cmd=(gcloud compute tpus tpu-vm ssh "$tpu" "--zone=$zone" --worker=all "--command=$program")
[[ -n "$project" ]] && cmd+=("--project=$project")

if [[ $dry_run -eq 1 ]]; then
  printf '%q ' "${cmd[@]}"
  echo
else
  "${cmd[@]}"
fi
