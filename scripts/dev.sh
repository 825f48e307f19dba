#!/usr/bin/env bash
# The README's two commands:
#   bash scripts/dev.sh main   -> set up if needed, then run the main job
#   bash scripts/dev.sh test   -> set up if needed, then run the whole test suite (slow tests included)
# Extra arguments after `test` go to pytest.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
what="${1:-}"; shift || true
bash scripts/setup.sh
# shellcheck disable=SC1091
source "${OTF_VENV:-$here/.venv}/bin/activate"
case "$what" in
    main)
        exec bash scripts/main-job.sh "$@" ;;
    test)
        exec python -m pytest "$@" ;;
    *)
        echo "usage: bash scripts/dev.sh main|test [pytest args]" >&2; exit 2 ;;
esac
