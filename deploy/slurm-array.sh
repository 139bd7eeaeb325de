#!/usr/bin/env bash
# A Slurm job array over a list of CTs (docs/scale-out.md): task I of N
# runs `segpipe ct --inputs LIST --shard I/N`; no coordinator, and a task
# that is re-run (requeue, preemption) skips the inputs already done.
#   sbatch --array=0-15 deploy/slurm-array.sh /data/inputs.txt /data/out
#SBATCH --job-name=segpipe
#SBATCH --array=0-15
#SBATCH --cpus-per-task=8
#SBATCH --mem=6G
#SBATCH --time=04:00:00
#SBATCH --requeue
set -euo pipefail
list=${1:?usage: sbatch --array=0-N deploy/slurm-array.sh LIST OUTDIR}
out=${2:?usage: sbatch --array=0-N deploy/slurm-array.sh LIST OUTDIR}
n=${SLURM_ARRAY_TASK_COUNT:-16}
exec segpipe ct --inputs "$list" --shard "${SLURM_ARRAY_TASK_ID}/${n}" -o "$out" --threads "${SLURM_CPUS_PER_TASK:-8}" -q
