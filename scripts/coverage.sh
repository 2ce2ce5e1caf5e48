#!/usr/bin/env bash
# Branch coverage of the whole test suite, including Dask worker processes and every subprocess
# (the CLI, `crantseg demo`, `dask scheduler` / `dask worker`, notebook kernels).
#
# Each new Python process imports a `sitecustomize` from a temporary directory put first on
# PYTHONPATH; it starts coverage when COVERAGE_PROCESS_START names the config (pyproject.toml), so
# every process writes its own data file (parallel mode) into one directory, combined at the end.
# Nothing of this is active in the normal `python -m pytest` run.
#
#   scripts/coverage.sh                 # whole suite
#   scripts/coverage.sh tests/ops -x    # any pytest arguments
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
hook="$(mktemp -d)"
trap 'rm -rf "$hook"' EXIT
cat > "$hook/sitecustomize.py" <<'PY'
import coverage
coverage.process_startup()
PY
export COVERAGE_PROCESS_START="$root/pyproject.toml"
export CRANTSEG_COVERAGE_DIR="${CRANTSEG_COVERAGE_DIR:-$root/.coverage-data}"
rm -rf "$CRANTSEG_COVERAGE_DIR" && mkdir -p "$CRANTSEG_COVERAGE_DIR"
export PYTHONPATH="$hook:$root${PYTHONPATH:+:$PYTHONPATH}"
status=0
python -m pytest -q -p no:cacheprovider "$@" || status=$?
python -m coverage combine --rcfile=pyproject.toml -q "$CRANTSEG_COVERAGE_DIR"
python -m coverage report --rcfile=pyproject.toml
exit $status
