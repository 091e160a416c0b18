#!/usr/bin/env bash
# Install what is missing (scripts/install.sh), then run the whole test suite.
# Extra arguments go to pytest, e.g.  ./scripts/test.sh tests/test_peers.py -k orthanc
# "No tests collected" (pytest exit code 5) counts as a failure.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

./scripts/install.sh

echo "[test] .venv/bin/python -m pytest -q -p no:cacheprovider --timeout=300 $*"
status=0
.venv/bin/python -m pytest -q -p no:cacheprovider --timeout=300 "$@" </dev/null || status=$?

if [ "$status" -eq 5 ]; then
    echo "[test] FAILED: pytest collected no tests (exit code 5); an empty run is a failure" >&2
    exit 1
fi
if [ "$status" -ne 0 ]; then
    echo "[test] FAILED: pytest exit code $status" >&2
fi
exit "$status"
