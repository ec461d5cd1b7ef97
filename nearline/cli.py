"""`nearline` console script. Each subcommand is a thin wrapper around a module function."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from nearline.config import ConfigError, load_config


def _cfg(args):
    cfg = load_config(args.config)
    from nearline import kafka_io

    kafka_io.configure_security(cfg.kafka)  # every Kafka client of this command gets TLS/SASL
    return cfg


# ---- services ---------------------------------------------------------------------------------
def cmd_services(args) -> int:
    from nearline.services import LocalServices

    if args.dcs and args.dcs > 1:
        return _services_multidc(args)
    svc = LocalServices(_cfg(args))
    if args.action == "up":
        st = svc.up()
        print(f"kafka  {st.kafka_bootstrap}  ({st.broker if st.kafka_pid else 'external'}, pid {st.kafka_pid})")
        print(f"redis  {st.redis_url}  (pid {st.redis_pid or 'external'})")
        if st.schema_registry_url:
            print(f"schema registry  {st.schema_registry_url}  (Apicurio, in memory, pid {st.schema_registry_pid})")
    elif args.action == "down":
        stopped = svc.down()
        print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
    else:
        st = svc.status()
        if args.json:
            print(json.dumps(st))
        else:
            for k, v in st.items():
                print(f"{k:16s} {v}")
        return 0 if st["kafka_up"] and st["redis_up"] and st.get("schema_registry_up", True) else 1
    return 0


def _services_multidc(args) -> int:
    from nearline.multidc import MultiDCServices

    m = MultiDCServices(_cfg(args), args.dcs)
    if args.action == "up":
        st = m.up()
        for name, ep in st["endpoints"].items():
            print(f"{name}  kafka {ep['kafka_bootstrap']} (pid {ep['kafka_pid']})  redis {ep['redis_url']} (pid {ep['redis_pid']})")
        print(f"mirrormaker 2 (pid {st['mirrormaker_pid']}): every DC's entity-updates mirrored to every other DC")
        return 0
    if args.action == "down":
        stopped = m.down()
        print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
        return 0
    st = m.status()
    if args.json:
        print(json.dumps(st))
    else:
        for name, v in st.items():
            print(f"{name:12s} {v}")
    ok = st["mirrormaker"]["pid"] and all(v["kafka_up"] and v["redis_up"] for k, v in st.items() if k != "mirrormaker")
    return 0 if ok else 1


# ---- marketplace ------------------------------------------------------------------------------
def cmd_marketplace(args) -> int:
    cfg = _cfg(args)
    out = Path(args.out) if args.out else cfg.path(cfg.standardizers.taxonomy_dir)
    if args.action == "generate":
        from nearline.marketplace.generate import MarketplaceSpec, generate

        spec = MarketplaceSpec(members=args.members, jobs=args.jobs, seed=args.seed,
                               impressions_per_member=args.impressions, companies=args.companies)
        summary = generate(spec, out, fmt=args.format)
        print(json.dumps({k: v for k, v in summary.items() if k != "spec"}, indent=2))
        print(f"written to {out}")
        return 0
    from nearline import kafka_io
    from nearline.codec import codec_for
    from nearline.marketplace.stream import UpdateStreamer, load_marketplace, publish
    from nearline.services import resolve_endpoints

    from nearline.health import require_kafka

    bootstrap, _ = resolve_endpoints(cfg)
    streamer = UpdateStreamer(load_marketplace(out), seed=args.seed)
    require_kafka(bootstrap)
    producer = kafka_io.make_producer(bootstrap, cfg.kafka.producer_linger_ms)
    counts = publish(streamer, producer, cfg.topics.entity_updates, codec_for(cfg), args.count, args.rate)
    producer.close()
    print(json.dumps(counts))
    return 0


# ---- standardizers ----------------------------------------------------------------------------
def cmd_standardize(args) -> int:
    from nearline.health import require_kafka
    from nearline.services import resolve_endpoints
    from nearline.standardize import run_processor

    cfg = _cfg(args)
    bootstrap, _ = resolve_endpoints(cfg)
    require_kafka(bootstrap)
    stats = run_processor(cfg, args.processor, bootstrap, max_messages=args.max_messages, idle_exit_s=args.idle_exit)
    print(json.dumps({"processor": args.processor, **stats}))
    return 0


# ---- models -----------------------------------------------------------------------------------
def cmd_models(args) -> int:
    from nearline.registry import Registry, check_package

    cfg = _cfg(args)
    if args.action in ("register", "retire"):  # backfill block: nearline/model_lifecycle.py
        from nearline.model_lifecycle import cli_register, cli_retire

        return (cli_register if args.action == "register" else cli_retire)(cfg, args)
    reg = Registry(cfg.path(cfg.models.registry))
    entries = reg.entries()
    if args.action == "list":
        print(f"{'model':28s} {'type':7s} {'dim':>4s}  {'standardizers':28s} path")
        for e in entries:
            pkg, problems = check_package(reg.resolve(e), cfg.entity_types)
            if pkg:
                m = pkg.manifest
                print(f"{m.key:28s} {m.entity_type:7s} {m.output_dim:4d}  {','.join(sorted(m.standardizers())):28s} {e}")
            else:
                print(f"{'(broken)':28s} {'-':7s} {'-':>4s}  {'-':28s} {e}")
        return 0
    bad = 0
    for e in entries:
        pkg, problems = check_package(reg.resolve(e), cfg.entity_types)
        if problems:
            bad += 1
            print(f"FAIL {e}")
            for p in problems:
                print(f"  - {p}")
        else:
            print(f"ok   {e}  ({pkg.manifest.key}, {pkg.manifest.entity_type})")
    print(f"{len(entries) - bad} ok, {bad} broken")
    return 1 if bad else 0


# ---- training ---------------------------------------------------------------------------------
def cmd_train(args) -> int:
    cfg = _cfg(args)
    if not Path(args.config_file).is_file():  # before importing torch (seconds)
        raise ConfigError(f"training config {args.config_file} not found (see models/configs/*.yaml)")
    try:
        from nearline.models.train import run_training
    except ImportError as exc:
        print(f"nearline: error: training needs the train extra (torch==2.13.0): pip install -e '.[train]' ({exc})",
              file=sys.stderr)
        return 2
    from nearline.models.multitask import TrainConfig
    from nearline.registry import Registry

    try:
        TrainConfig.from_yaml(Path(args.config_file))
    except Exception as exc:  # KeyError/TypeError/ValueError/YAMLError: all mean "not a training config"
        why = f"missing key {exc}" if isinstance(exc, KeyError) else f"{type(exc).__name__}: {exc}"
        raise ConfigError(f"{args.config_file} is not a valid training config (see models/configs/*.yaml): {why}") from exc
    reg = Registry(cfg.path(cfg.models.registry))
    s = run_training(Path(args.config_file), Path(args.out) if args.out else None, args.version,
                     reg if args.register else None,
                     packages_root=Path(args.packages_root) if args.packages_root else None)
    for task, m in s["best"]["metrics"].items():
        extra = f"  (true-affinity ceiling {m['ceiling_auc']:.4f})" if "ceiling_auc" in m else ""
        print(f"{task:10s} val AUC {m['auc']:.4f}  log loss {m['logloss']:.4f}{extra}")
    for task, m in s.get("test_metrics", {}).items():
        print(f"{task:10s} TEST AUC {m['auc']:.4f}  log loss {m['logloss']:.4f}  (epoch {s['best']['epoch']}, {m['n_test']:,} rows)")
    print(f"plots: {', '.join(s['plots'])}")
    print(f"ONNX/PyTorch parity (max abs diff): {s['parity_max_abs_diff']}")
    print("registered:" if args.register else "to register this version, add these lines to " + str(reg.path) + ":")
    for line in s["registry_lines"]:
        print(line)
    return 0


# ---- the nearline job and its consumers --------------------------------------------------------
def cmd_evaluate(args) -> int:
    try:
        from nearline.models.evaluate import EvaluationError, run_evaluation
    except ImportError as exc:
        print(f"evaluation needs the train extra (torch, lightgbm): pip install -e '.[train]' ({exc})", file=sys.stderr)
        return 2
    cfg = _cfg(args)
    try:
        report = run_evaluation(args.target, args.baseline, cfg.path(cfg.models.registry),
                                Path(args.out) if args.out else None,
                                Path(args.train_config) if args.train_config else None,
                                Path(args.data_dir) if args.data_dir else None, args.lift_task,
                                args.single_task_epochs, progress=True)
    except (EvaluationError, FileNotFoundError) as exc:
        print(f"nearline evaluate: {exc}", file=sys.stderr)
        return 2
    print(f"report: {report}")
    return 0


def cmd_run(args) -> int:
    import signal

    from nearline.beam_jobs import nearline_job
    from nearline import metrics
    from nearline.health import Readiness, require_kafka, require_redis
    from nearline.kafka_io import ensure_topics
    from nearline.lifecycle import STOP, StopRequested
    from nearline.services import resolve_endpoints

    log = logging.getLogger("nearline")

    def stop(signum, _frame):
        log.info("signal %d: stopping after the current batch (again to exit at once)", signum)
        STOP.set()
        signal.signal(signal.SIGINT, signal.SIG_DFL)  # a second Ctrl-C ends the process immediately
        signal.signal(signal.SIGTERM, signal.SIG_DFL)

    # installed first, so that a stop during start-up (e.g. while waiting for Kafka) is clean too
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    cfg = _cfg(args)
    bootstrap, redis_url = resolve_endpoints(cfg)
    # at start-up a dead dependency is a one-line error in seconds; once running, the job waits for it
    require_kafka(bootstrap)
    require_redis(redis_url)
    try:
        from nearline.embedding_messages import ensure_embedding_topic

        ensure_embedding_topic(bootstrap, cfg)  # log-compacted: first, before the generic create
        ensure_topics(bootstrap, cfg.all_topics(), cfg.topics.partitions, cfg.topics.replication_factor)
        j = cfg.job
        metrics.serve(j.metrics_port, bind=j.metrics_bind, readiness=Readiness(
            bootstrap, redis_url, max_lag=j.ready_max_lag, max_stall_s=j.ready_max_stall_s))
        metrics.start_logger(cfg.job.log_every_s)
        log.info("nearline job: kafka %s, redis %s, runner %s, metrics http://%s:%s/metrics (/healthz, /readyz)",
                 bootstrap, redis_url, cfg.job.runner, j.metrics_bind, j.metrics_port)
        nearline_job.run(cfg, bootstrap, redis_url, args.beam_args)
    except Exception as exc:
        if STOP.is_set() and (isinstance(exc, StopRequested) or "stop requested" in str(exc)):
            log.info("stopped while waiting for Kafka/Redis; the unfinished batch was not committed and "
                     "will be re-read on the next start")
            return 0
        raise
    log.info("stopped")
    return 0


def cmd_tail(args) -> int:
    import numpy as np

    from nearline import kafka_io
    from nearline.codec import CodecError, codec_for
    from nearline.health import require_kafka
    from nearline.services import resolve_endpoints

    log = logging.getLogger("nearline.tail")
    cfg = _cfg(args)
    bootstrap, _ = resolve_endpoints(cfg)
    require_kafka(bootstrap)
    topic = cfg.topics.dead_letter if args.dead_letters else cfg.topics.embeddings
    expect = "DeadLetter" if args.dead_letters else "EntityEmbeddings"
    c = kafka_io.make_consumer(bootstrap, None, auto_offset_reset="earliest" if args.from_beginning else "latest")
    codec, n, skipped = codec_for(cfg), 0, 0
    try:
        c.assign([kafka_io.TopicPartition(topic, p) for p in kafka_io.partitions_of(c, topic)])
        if not args.from_beginning:
            c.seek_to_end()
        while args.max is None or n < args.max:
            for msgs in c.poll(500, max_records=None if args.max is None else args.max - n).values():
                for m in msgs:
                    if args.max is not None and n >= args.max:
                        break
                    try:
                        if args.dead_letters:
                            rec = codec.decode(m.value, expect=expect)
                        else:  # full-state records, ModelRetired notices, null-value tombstones
                            from nearline.embedding_messages import read_message

                            msg = read_message(m.key, m.value, m.headers, codec)
                            rec = msg.record if m.value is not None else {
                                "tombstone": True, "key": msg.key, "version": msg.version, "partition": m.partition,
                                "offset": m.offset}
                    except CodecError as exc:  # a poison record is reported and skipped, never fatal
                        skipped += 1
                        log.warning("skipped %s[%d]@%d: %s", m.topic, m.partition, m.offset, exc)
                        continue
                    if "embeddings" in rec:
                        for e in rec["embeddings"]:
                            e["vector"] = [round(float(x), 4) for x in np.frombuffer(e["vector"], "<f4")[:4]] + ["..."]
                    elif "original" in rec:
                        rec["original"] = rec["original"][:40].hex()
                    print(json.dumps(rec, default=str), flush=True)
                    n += 1
    except KeyboardInterrupt:
        pass
    finally:
        c.close()
        if skipped:
            log.warning("%d record(s) skipped: not %s", skipped, expect)
    return 0


def cmd_get(args) -> int:
    from nearline.client import EmbeddingClient
    from nearline.health import require_redis
    from nearline.services import resolve_endpoints

    cfg = _cfg(args)
    if args.entity_type not in cfg.entity_types:
        raise ConfigError(f"unknown entity type {args.entity_type!r}; this service embeds {cfg.entity_types}")
    bootstrap, redis_url = resolve_endpoints(cfg)
    require_redis(redis_url)
    with EmbeddingClient(cfg, bootstrap, redis_url) as client:
        version, deleted, vecs = client.get_with_version(args.entity_type, args.entity_id)
        key = client.store.key(args.entity_type, args.entity_id)
    if version is None and not vecs:
        print(f"nearline: no embeddings for {args.entity_type}:{args.entity_id} in Redis at {redis_url} "
              f"(key {key}): the entity is unknown or not processed yet", file=sys.stderr)
        return 1
    print(json.dumps({"entity": f"{args.entity_type}:{args.entity_id}", "version": version, "deleted": deleted,
                      "embeddings": {k: [round(float(x), 5) for x in v] for k, v in vecs.items()}}, indent=None if args.compact else 2))
    return 0


# ---- backfill / rebuild (nearline/backfill.py) ---------------------------------------------------
def cmd_backfill(args) -> int:
    from nearline.backfill import BackfillError, run_backfill
    from nearline.services import resolve_endpoints

    cfg = _cfg(args)
    bootstrap, redis_url = resolve_endpoints(cfg)
    try:
        res = run_backfill(cfg, bootstrap, redis_url, models=args.models, all_models=args.all, dry_run=args.dry_run,
                           rescore=args.rescore, batch_size=args.batch_size, max_passes=args.max_passes,
                           beam_args=args.beam_args, progress=not args.no_progress)
    except BackfillError as exc:
        print(f"nearline backfill: {exc}", file=sys.stderr)
        return 2
    print(res.summary_line())
    if args.json:
        print(json.dumps({"models": res.models, "passes": res.passes, "seconds": round(res.seconds, 3), **res.counts.as_dict()}))
    return 1 if res.counts.failed else 0


def cmd_demo(args) -> int:
    if args.dcs and args.dcs > 1:
        from nearline.demo_multidc import run_multidc_demo

        return run_multidc_demo(_cfg(args), args.dcs, args.rate, args.duration, args.members, args.jobs)
    from nearline.demo import run_demo

    return run_demo(_cfg(args), args.config, args.rate, args.duration, args.members, args.jobs)


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
    s.add_argument("--members", type=int, default=2000)
    s.add_argument("--jobs", type=int, default=1000)
    s.add_argument("--impressions", type=int, default=20, help="jobs shown per member (view task rows)")
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
    s.add_argument("--dry-run", action="store_true", help="scan and count what would be written; write nothing")
    s.add_argument("--rescore", action="store_true", help="also rescore embeddings already present (bitwise dedupe)")
    s.add_argument("--batch-size", type=int, default=1024, help="entities per ORT call")
    s.add_argument("--max-passes", type=int, default=5, help="catch-up passes over records the job appends meanwhile")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    s.add_argument("--json", action="store_true", help="also print the summary as JSON")
    s.add_argument("beam_args", nargs="*", help="Beam pipeline options after --, e.g. -- --runner=FlinkRunner")
    s.set_defaults(func=cmd_backfill)

    for sp in sub.choices.values():  # the global options also after the subcommand: `nearline get ... -v`
        sp.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="as `nearline -v`")
        sp.add_argument("--log-format", choices=["text", "json"], default=argparse.SUPPRESS, help="as `nearline --log-format`")
    return p


# ---- errors: one line a person can act on; the traceback only with --verbose ---------------------
def describe_error(exc: BaseException) -> tuple[str, int]:
    """(one-line message, exit code) for an exception that ended a command. 2: fix the config/arguments."""
    from nearline.health import Unreachable
    from nearline.services import ServiceError

    def one_line(text: str) -> str:
        text = " ".join(str(text).split())
        # e.g. a Beam pipeline error carries the worker's whole traceback in its message: keep its ends
        return text if len(text) <= 600 else f"{text[:300]} ... {text[-250:]} (--verbose shows all)"

    if isinstance(exc, ConfigError):
        return one_line(f"config: {exc}"), 2
    if isinstance(exc, (Unreachable, ServiceError)):
        return one_line(exc), 1
    if isinstance(exc, FileNotFoundError):
        text = f"{exc.strerror}: {exc.filename}" if exc.filename else (exc.args[0] if exc.args else str(exc))
        return one_line(text), 1
    try:
        from nearline.registry import PackageError

        if isinstance(exc, PackageError):
            return one_line(f"model registry: {exc}"), 1
    except ImportError:  # pragma: no cover
        pass
    from kafka.errors import KafkaError
    from redis.exceptions import RedisError

    if isinstance(exc, KafkaError):
        return one_line(f"Kafka: {type(exc).__name__}: {exc}"), 1
    if isinstance(exc, RedisError):
        return one_line(f"Redis: {type(exc).__name__}: {exc}"), 1
    if isinstance(exc, OSError):
        return one_line(f"{type(exc).__name__}: {exc}"), 1
    return one_line(f"{type(exc).__name__}: {exc} (unexpected; run with --verbose for the traceback)"), 1


def main(argv: list[str] | None = None) -> int:
    from nearline import logs

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


if __name__ == "__main__":
    sys.exit(main())
