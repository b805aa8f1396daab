#!/usr/bin/env bash
# A Slurm job array that classifies the images listed in a manifest with the three Large models: task i
# runs shard i of the array (wstream reads SLURM_ARRAY_TASK_ID / _MIN / _STEP / _COUNT itself) and writes
# $RESULTS/part-<i>.jsonl with --resume, so a requeued task continues where it stopped.
#
#   sbatch --array=0-15 tools/deploy/slurm-array.sh
#
# Weights sit on a read-only shared file system; the tasks of one node share one page-cache copy of them
# (wstream maps them MAP_SHARED), so each task needs memory for its activations only.
# Exit statuses: 0 done; 65 done with failed inputs (their records hold the errors); 75 retryable (weights
# unavailable, output not writable): the task is requeued, at most MAX_REQUEUE times.
#SBATCH --job-name=wstream-classify
#SBATCH --cpus-per-task=2
#SBATCH --mem=1G
#SBATCH --requeue
#SBATCH --output=wstream-%A_%a.log
set -uo pipefail
WSTREAM=${WSTREAM:-wstream}
WEIGHTS=${WEIGHTS:-/shared/weights}
MANIFEST=${MANIFEST:-/shared/images/manifest.txt}
RESULTS=${RESULTS:-/shared/results}
MAX_REQUEUE=${MAX_REQUEUE:-3}

"$WSTREAM" classify \
  --model "$WEIGHTS/vit_large_patch16_224" \
  --model "$WEIGHTS/convnext_large" \
  --model "$WEIGHTS/swin_large_patch4_window7_224" \
  --files-from "$MANIFEST" \
  --output "$RESULTS/part-${SLURM_ARRAY_TASK_ID}.jsonl" --resume \
  --skip-errors --quiet --threads "${SLURM_CPUS_PER_TASK:-2}"
status=$?
if [ "$status" -eq 75 ] && [ "${SLURM_RESTART_COUNT:-0}" -lt "$MAX_REQUEUE" ]; then
  scontrol requeue "${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"
fi
exit "$status"
