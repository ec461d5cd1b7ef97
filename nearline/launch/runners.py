"""Which Beam runner the streaming job runs on, and the pipeline options each needs.

    fnapi   Python's FnApiRunner in streaming mode, in this process (the local default; version-pinned
            patches in beam_jobs/runner_patches.py are applied for it and only for it)
    prism   Beam's portable Prism runner (Go), built by scripts/setup.sh with ``go install`` pinned to the
            installed Beam version; the Python stages run in this process (LOOPBACK environment)

Any other runner (Flink, Dataflow) is reached through raw Beam options after ``--``
(``nearline run -- --runner=FlinkRunner --flink_master=...``); docs/operations-runners.md says which.
"""

from __future__ import annotations

import os
from pathlib import Path

import apache_beam

RUNNERS = {"fnapi": "FnApiRunner", "prism": "PrismRunner"}
PRISM_MODULE = "github.com/apache/beam/sdks/v2/go/cmd/prism"


class RunnerError(RuntimeError):
    """A runner that cannot start here; the message is one line saying what to run."""


def runner_name(choice: str) -> str:
    """'fnapi' | 'prism' | a Beam runner class name -> the Beam runner class name."""
    return RUNNERS.get(choice.lower(), choice) if choice else "FnApiRunner"


def prism_cache_dir() -> Path:
    base = os.environ.get("NEARLINE_PRISM_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "nearline", "prism")
    return Path(base) / f"v{apache_beam.__version__}"


def prism_binary(configured: str = "") -> Path:
    """The Prism binary for the installed Beam: ``job.prism_binary``, else NEARLINE_PRISM_BINARY, else the
    cache that scripts/setup.sh fills. Raises RunnerError (one line, what to run) when it is missing."""
    path = Path(configured or os.environ.get("NEARLINE_PRISM_BINARY") or prism_cache_dir() / "prism")
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise RunnerError(f"Prism binary not found at {path}: run `bash scripts/setup.sh` (it builds it with "
                          f"`go install {PRISM_MODULE}@v{apache_beam.__version__}`, Go 1.22+), or set "
                          f"job.prism_binary / NEARLINE_PRISM_BINARY")
    return path


def beam_args(runner: str, beam_args: list[str] | None = None, prism_path: str = "") -> tuple[str, list[str]]:
    """(effective runner class name, Beam pipeline arguments). Raw ``--runner=...`` in ``beam_args`` wins."""
    args = list(beam_args or [])
    explicit = next((a.split("=", 1)[1] for a in args if a.startswith("--runner=")), None)
    name = runner_name(explicit or runner)
    if explicit is None:
        args.append(f"--runner={name}")
    if name == "PrismRunner":
        if not any(a.startswith("--prism_location") for a in args):
            args.append(f"--prism_location={prism_binary(prism_path)}")
        if not any(a.startswith("--environment_type") for a in args):
            args.append("--environment_type=LOOPBACK")
    if "--streaming" not in args:
        args.append("--streaming")
    return name, args
