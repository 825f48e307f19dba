#!/usr/bin/env bash
# The main job: on-the-fly MD of bulk BCC Li at 600 K, labelled by GPAW on 2 MPI ranks.
# Called by `bash scripts/dev.sh main` with the venv active. Extra arguments go to `otf-statcut run`
# (e.g. --overwrite to start over; without it a re-run resumes or reports the finished run).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ranks="${OTF_RANKS:-2}"
exec mpiexec -n "$ranks" otf-statcut run inputs/quickstart.yaml "$@"
