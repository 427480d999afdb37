#!/bin/bash
# The bash job array for PBS Pro / OpenPBS: each subjob submits one QLAM task and waits for
# it; the whole array costs one token request. (Torque: write "#PBS -t 0-49" instead of
# "-J"; it names the index PBS_ARRAYID.)
#
#   qsub array-pbs.sh
#
# Do not pass credentials with qsub -v or -V: PBS keeps them in the job's Variable_List,
# which `qstat -f` prints. The job reads them from a file only you can read.
#
#PBS -N qlam-array
#PBS -J 0-49
#PBS -l select=1:ncpus=1
#PBS -l walltime=00:30:00
#PBS -j oe
set -euo pipefail

cd "${PBS_O_WORKDIR:-$PWD}"
credentials=${QLAM_CREDENTIALS:-$HOME/.config/qlam/credentials}
if [ ! -f "$credentials" ] || [ ! -O "$credentials" ] || [ -n "$(find "$credentials" -perm /077)" ]; then
    echo "error: $credentials must be a file of yours that only you can read (chmod 600)" >&2
    exit 3
fi
qlam() ( set -a; . "$credentials"; set +a; exec qlam-hpc "$@" )

task=${PBS_ARRAY_INDEX:-${PBS_ARRAYID:-0}}
array_job=${PBS_JOBID:-local}
array_job=${array_job%%\[*}
results=${QLAM_RESULTS_DIR:-$PWD/results}
mkdir -p "$results"
echo "array task $task of job $array_job on $(hostname)"

# qlam-hpc adds PBS_JOBID and the array index to the task's system_metadata.
id=$(qlam tasks submit - --wait --quiet --timeout 25m --idempotency-key "$array_job-$task" <<JSON
{"program_language": "squin",
 "programs": [{"content": "circuit ok"}],
 "subtasks": [{"program_index": 0, "num_shots": 100, "arguments": {"theta": $task}}]}
JSON
)
echo "QLAM task $id completed"
qlam api GET "/v2/{qpu_mode}/tasks/$id/results" >"$results/$task.json"
