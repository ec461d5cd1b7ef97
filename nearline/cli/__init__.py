"""The ``nearline`` console script: argument parsing and error reporting (this module) and the
subcommands (commands, model_commands), each a thin wrapper around a function elsewhere.

Nothing imports the CLI.
"""

from __future__ import annotations

import argparse
import os
import sys

from nearline.cli.commands import (
    cmd_backfill,
    cmd_demo,
    cmd_evaluate,
    cmd_get,
    cmd_marketplace,
    cmd_models,
    cmd_run,
    cmd_services,
    cmd_standardize,
    cmd_tail,
    cmd_train,
)
from nearline.config import ConfigError
from nearline.config import load_config as load_config


def _positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return n


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nearline", description="Nearline embedding service: keeps entity embeddings fresh in Redis and Kafka.")
    p.add_argument("--config", help="config file (default: $NEARLINE_CONFIG, ./nearline.yaml, or the repo's)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging, and the traceback of an error")
    p.add_argument("--log-format", choices=["text", "json"], default=None,
                   help="text (default) or json: one JSON object per log line (also $NEARLINE_LOG_FORMAT)")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("demo", help="everything on local defaults: services, standardizers, the job, a steady stream, a live summary")
    s.add_argument("--rate", type=float, default=200.0, help="entity updates per second")
    s.add_argument("--duration", type=float, default=None, help="stop after this many seconds (default: until Ctrl-C)")
    s.add_argument("--members", type=int, default=2000, help="marketplace size if it must be generated")
    s.add_argument("--jobs", type=int, default=1000)
    s.add_argument("--dcs", type=int, default=1, help="N>1: N local data centers with MirrorMaker 2, freshness side by side")
    s.set_defaults(func=cmd_demo)

    s = sub.add_parser("services", help="start/stop/inspect the local Redis and Apache Kafka broker")
    s.add_argument("action", choices=["up", "down", "status"])
    s.add_argument("--json", action="store_true", help="status as JSON (kafka_bootstrap, redis_url, PIDs)")
    s.add_argument("--dcs", type=int, default=1,
                   help="local data centers: N>1 starts dc1..dcN (a Kafka and a Redis each) and MirrorMaker 2")
    s.set_defaults(func=cmd_services)

    s = sub.add_parser("marketplace", help="synthetic job marketplace: generate data files or stream updates")
    s.add_argument("action", choices=["generate", "stream"])
    s.add_argument("--out", help="data directory (default: standardizers.taxonomy_dir)")
    s.add_argument("--seed", type=int, default=7, help="random seed (deterministic output)")
    s.add_argument("--preset", choices=["default", "demo"], default="default",
                   help="default: the training size (20k members, 10k jobs, 30 impressions each, 10 InMails per job); "
                        "demo: the small one the demo and the shipped v1 towers use")
    s.add_argument("--members", type=int, default=None, help="members (default: the preset's)")
    s.add_argument("--jobs", type=int, default=None, help="jobs (default: the preset's)")
    s.add_argument("--impressions", type=int, default=None, help="jobs shown per member (view task rows)")
    s.add_argument("--inmails", type=int, default=None, help="recruiter InMails per job (InMail task rows)")
    s.add_argument("--companies", type=int, default=0, help="0 = scale with size")
    s.add_argument("--format", choices=["parquet", "avro"], default="parquet")
    s.add_argument("--rate", type=float, default=200.0, help="stream: events per second (0 = unthrottled)")
    s.add_argument("--count", type=int, default=1000, help="stream: number of events")
    s.set_defaults(func=cmd_marketplace)

    s = sub.add_parser("standardize", help="run one feature-standardization processor (its own consumer group)")
    s.add_argument("--processor", required=True, choices=["title", "skills", "company", "geo"])
    s.add_argument("--max-messages", type=int, default=None, help="stop after this many inputs")
    s.add_argument("--idle-exit", type=float, default=None, help="stop after this many idle seconds")
    s.set_defaults(func=cmd_standardize)

    s = sub.add_parser("train", help="train the multitask two-tower model and export both towers as ONNX packages")
    s.add_argument("--config", dest="config_file", required=True, help="training config YAML (models/configs/*.yaml)")
    s.add_argument("--out", help="run directory for checkpoints, plots and summary (default runs/<config>-<version>)")
    s.add_argument("--version", help="model version (default v<UTC timestamp>)")
    s.add_argument("--packages-root", help="where the packages go (default <out>/packages; models/packages to ship)")
    s.add_argument("--register", action="store_true", help="append the registry lines (registers the version)")
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("evaluate", help="evaluate a trained run or registered version: GBDT lift, cross-task transfer, feature importance")
    s.add_argument("target", help="a run folder (from nearline train) or NAME@VERSION of a registered tower")
    s.add_argument("--baseline", help="NAME@VERSION (or run folder) to put side by side, on the same rows")
    s.add_argument("--out", help="report folder (default <run>/evaluation or runs/evaluate-NAME-VERSION)")
    s.add_argument("--train-config", help="training config of the run (default: the one in its manifest)")
    s.add_argument("--data-dir", help="override the config's source data_dir")
    s.add_argument("--lift-task", default=None, help="task of the downstream GBDT ranker (default apply, else the first task)")
    s.add_argument("--single-task-epochs", type=int, default=None, help="epochs of the single-task references (default: the config's)")
    s.set_defaults(func=cmd_evaluate)

    s = sub.add_parser("run", help="run the nearline Beam streaming job (Ctrl-C stops it cleanly)")
    s.add_argument("--runner", choices=["fnapi", "prism"], default=None,
                   help="Beam runner (default: job.runner): fnapi = Python's FnApiRunner in this process; "
                        "prism = Beam's portable Prism runner (built by scripts/setup.sh)")
    s.add_argument("--assignment", choices=["static", "group"], default=None,
                   help="how instances share the partition groups (default: job.assignment): static = "
                        "--instance I of --instances N; group = Kafka's consumer-group protocol")
    s.add_argument("--instances", type=_positive_int, default=None,
                   help="static assignment: how many job instances share the input partitions")
    s.add_argument("--instance", default=None,
                   help="static assignment: this instance's index 0..N-1, or 'auto' (a StatefulSet pod's ordinal "
                        "from its host name)")
    s.add_argument("--metrics-port", type=int, default=None,
                   help="port of /metrics, /healthz, /readyz (default: job.metrics_port; 0: none)")
    s.add_argument("beam_args", nargs="*", help="Beam pipeline options after --, e.g. -- --runner=FlinkRunner")
    s.set_defaults(func=cmd_run)

    s = sub.add_parser("tail", help="print decoded EntityEmbeddings records (full state per entity; deletes as "
                       "{\"tombstone\": true, \"key\", \"version\"}) as they are published")
    s.add_argument("--from-beginning", action="store_true")
    s.add_argument("--dead-letters", action="store_true", help="tail the dead-letter topic instead")
    s.add_argument("--max", type=_positive_int, default=None, help="stop after this many records")
    s.set_defaults(func=cmd_tail)

    s = sub.add_parser("get", help="read an entity's embeddings from Redis")
    s.add_argument("entity_type")
    s.add_argument("entity_id")
    s.add_argument("--compact", action="store_true")
    s.set_defaults(func=cmd_get)

    s = sub.add_parser("models", help="list registered model versions, check every package, register or retire one")
    s.add_argument("action", choices=["list", "check", "register", "retire"])
    s.add_argument("target", nargs="?", help="register: package folder; retire: NAME@VERSION")
    s.add_argument("--no-backfill", action="store_true", help="register: only append the registry line")
    s.add_argument("--grace", type=float, default=None,
                   help="retire: seconds to wait for the job to stop scoring it before removing its fields "
                        "(default: 2 x job.registry_poll_s + 5)")
    s.set_defaults(func=cmd_models)

    s = sub.add_parser("backfill", help="score registered versions on every live entity of the feature snapshot "
                                        "(Beam batch); --all rebuilds Redis")
    g = s.add_mutually_exclusive_group(required=True)
    g.add_argument("--models", nargs="+", metavar="NAME@VERSION", help="versions to backfill")
    g.add_argument("--all", action="store_true", help="every registered version (rebuild after a Redis wipe)")
    g.add_argument("--status", action="store_true", help="show running backfills (progress, rate, time left), "
                   "requested and finished ones; changes nothing")
    s.add_argument("--dry-run", action="store_true", help="scan and count what would be written; write nothing")
    s.add_argument("--rescore", action="store_true", help="also rescore embeddings already present (bitwise dedupe)")
    s.add_argument("--batch-size", type=int, default=1024, help="entities per ORT call")
    s.add_argument("--max-passes", type=int, default=5, help="catch-up passes over records the job appends meanwhile")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    s.add_argument("--json", action="store_true", help="also print the summary as JSON")
    s.add_argument("--runner", choices=["local", "dask"], default="local",
                   help="local: the Beam runner of job.runner in this process; dask: Beam's DaskRunner on a Dask "
                        "cluster (a local one of --workers processes, or --dask-scheduler)")
    s.add_argument("--workers", type=_positive_int, default=None, help="--runner dask: local worker processes "
                   "(default: one per core)")
    s.add_argument("--dask-scheduler", default=None, metavar="ADDRESS",
                   help="--runner dask: an existing cluster's scheduler, e.g. tcp://scheduler:8786")
    s.add_argument("beam_args", nargs="*", help="Beam pipeline options after --, e.g. -- --runner=FlinkRunner")
    s.set_defaults(func=cmd_backfill)

    for sp in sub.choices.values():  # the global options also after the subcommand: `nearline get ... -v`
        sp.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="as `nearline -v`")
        sp.add_argument("--log-format", choices=["text", "json"], default=argparse.SUPPRESS, help="as `nearline --log-format`")
    return p


# ---- errors: one line a person can act on; the traceback only with --verbose ---------------------
def describe_error(exc: BaseException) -> tuple[str, int]:
    """(one-line message, exit code) for an exception that ended a command. 2: fix the config/arguments."""
    from nearline.ops.health import RefusedCredentials, Unreachable
    from nearline.ops.procs import ServiceError

    def one_line(text: str) -> str:
        text = " ".join(str(text).split())
        # e.g. a Beam pipeline error carries the worker's whole traceback in its message: keep its ends
        return text if len(text) <= 600 else f"{text[:300]} ... {text[-250:]} (--verbose shows all)"

    if isinstance(exc, ConfigError):
        return one_line(f"config: {exc}"), 2
    if isinstance(exc, RefusedCredentials):
        return one_line(exc), 2
    if isinstance(exc, (Unreachable, ServiceError)):
        return one_line(exc), 1
    from nearline.io.kafka_io import NotCopartitioned
    from nearline.launch.runners import RunnerError
    from nearline.stream.assignment import AssignmentError

    if isinstance(exc, AssignmentError):
        return one_line(f"assignment: {exc}"), 2
    from nearline.launch.dask_cluster import DaskUnavailable

    if isinstance(exc, (RunnerError, NotCopartitioned, DaskUnavailable)):
        return one_line(exc), 1
    if isinstance(exc, FileNotFoundError):
        text = f"{exc.strerror}: {exc.filename}" if exc.filename else (exc.args[0] if exc.args else str(exc))
        return one_line(text), 1
    try:
        from nearline.registry.manifest import PackageError

        if isinstance(exc, PackageError):
            return one_line(f"model registry: {exc}"), 1
    except ImportError:  # pragma: no cover
        pass
    from kafka.errors import KafkaError
    from redis.exceptions import RedisError

    if isinstance(exc, KafkaError):
        from kafka.errors import KafkaTimeoutError

        from nearline.io.kafka_client_fixes import refused_credentials_hint

        # a wrong password surfaces as a bootstrap time-out (kafka-python retries it): say so when it was one
        refused = refused_credentials_hint() if isinstance(exc, KafkaTimeoutError) else ""
        if refused:
            return one_line(f"Kafka: {exc}: {refused}; check kafka.sasl_mechanism, kafka.sasl_username and "
                            "NEARLINE_KAFKA_SASL_PASSWORD"), 2
        return one_line(f"Kafka: {type(exc).__name__}: {exc}"), 1
    if isinstance(exc, RedisError):
        return one_line(f"Redis: {type(exc).__name__}: {exc}"), 1
    if isinstance(exc, OSError):
        return one_line(f"{type(exc).__name__}: {exc}"), 1
    return one_line(f"{type(exc).__name__}: {exc} (unexpected; run with --verbose for the traceback)"), 1


def main(argv: list[str] | None = None) -> int:
    from nearline.core import logs

    args = build_parser().parse_args(argv)
    logs.setup(verbose=args.verbose, fmt=args.log_format)
    if args.log_format:  # the processes `nearline demo` starts log the same way
        os.environ["NEARLINE_LOG_FORMAT"] = args.log_format
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        message, code = describe_error(exc)
        if args.verbose:
            import traceback

            traceback.print_exc()
        print(f"nearline: error: {message}", file=sys.stderr)
        return code
