"""The `nearline` subcommands, each a thin wrapper around a module function.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from pathlib import Path

from nearline.config import ConfigError, load_config


def _cfg(args):
    cfg = load_config(args.config)
    from nearline.io import kafka_io

    kafka_io.configure_security(cfg.kafka)  # every Kafka client of this command gets TLS/SASL
    return cfg


# ---- services ---------------------------------------------------------------------------------
def cmd_services(args) -> int:
    from nearline.ops.services import LocalServices

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
        print_status(st, args.json, 16)
        return 0 if st["kafka_up"] and st["redis_up"] and st.get("schema_registry_up", True) else 1
    return 0


def print_status(st: dict, as_json: bool, width: int) -> None:
    """`services status`: one JSON object, or one aligned line per service."""
    if as_json:
        print(json.dumps(st))
    else:
        for name, v in st.items():
            print(f"{name:{width}s} {v}")


def _services_multidc(args) -> int:
    from nearline.multidc.clusters import MultiDCServices

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
    print_status(st, args.json, 12)
    ok = st["mirrormaker"]["pid"] and all(v["kafka_up"] and v["redis_up"] for k, v in st.items() if k != "mirrormaker")
    return 0 if ok else 1


# ---- marketplace ------------------------------------------------------------------------------
def cmd_marketplace(args) -> int:
    cfg = _cfg(args)
    out = Path(args.out) if args.out else cfg.path(cfg.standardizers.taxonomy_dir)
    if args.action == "generate":
        from nearline.marketplace.generate import generate, preset

        spec = preset(args.preset, members=args.members, jobs=args.jobs, seed=args.seed,
                      impressions_per_member=args.impressions, inmails_per_job=args.inmails, companies=args.companies)
        summary = generate(spec, out, fmt=args.format)
        print(json.dumps({k: v for k, v in summary.items() if k != "spec"}, indent=2))
        print(f"written to {out}")
        return 0
    from nearline.io import kafka_io
    from nearline.io.codec import codec_for
    from nearline.marketplace.stream import UpdateStreamer, load_marketplace, publish
    from nearline.ops.health import require_kafka
    from nearline.ops.services import resolve_endpoints

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
    from nearline.ops.health import require_kafka
    from nearline.ops.services import resolve_endpoints
    from nearline.standardize.runner import run_processor

    cfg = _cfg(args)
    bootstrap, _ = resolve_endpoints(cfg)
    require_kafka(bootstrap)
    stats = run_processor(cfg, args.processor, bootstrap, max_messages=args.max_messages, idle_exit_s=args.idle_exit)
    print(json.dumps({"processor": args.processor, **stats}))
    return 0


# ---- models -----------------------------------------------------------------------------------
def cmd_models(args) -> int:
    from nearline.registry.check import check_package
    from nearline.registry.packages import Registry

    cfg = _cfg(args)
    if args.action in ("register", "retire"):  # backfill block: nearline/offline/launcher.py
        from nearline.cli.model_commands import cli_register, cli_retire

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
    from nearline.registry.packages import Registry

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
        from nearline.models.evaluation.run import run_evaluation
        from nearline.models.evaluation.twotower import EvaluationError
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
    from nearline.core import metrics
    from nearline.core.lifecycle import STOP, StopRequested
    from nearline.io.kafka_io import ensure_topics
    from nearline.ops.health import Readiness, require_kafka, require_redis
    from nearline.ops.health import serve as serve_metrics
    from nearline.ops.services import resolve_endpoints

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
    runner, beam_args = job_runner(cfg, args)
    bootstrap, redis_url = resolve_endpoints(cfg)
    # at start-up a dead dependency is a one-line error in seconds; once running, the job waits for it
    require_kafka(bootstrap)
    require_redis(redis_url)
    try:
        from nearline.io.embedding_messages import ensure_embedding_topic
        from nearline.io.kafka_io import check_copartitioned

        ensure_embedding_topic(bootstrap, cfg)  # log-compacted: first, before the generic create
        ensure_topics(bootstrap, cfg.all_topics(), cfg.topics.partitions, cfg.topics.replication_factor)
        check_copartitioned(bootstrap, cfg.input_topics(), cfg.topics.partitions)
        j = cfg.job
        serve_metrics(j.metrics_port, bind=j.metrics_bind, readiness=Readiness(
            bootstrap, redis_url, max_lag=j.ready_max_lag, max_stall_s=j.ready_max_stall_s))
        metrics.start_logger(cfg.job.log_every_s)
        groups, _ = nearline_job.partition_groups(cfg)
        log.info("nearline job: kafka %s, redis %s, runner %s, partition groups %s, metrics http://%s:%s/metrics "
                 "(/healthz, /readyz)", bootstrap, redis_url, runner,
                 f"{groups} (instance {j.instance} of {j.instances})" if j.assignment == "static"
                 else f"assigned by consumer group {cfg.kafka.consumer_group}.owners", j.metrics_bind, j.metrics_port)
        nearline_job.run(cfg, bootstrap, redis_url, beam_args, runner=runner)
    except Exception as exc:
        if STOP.is_set() and (isinstance(exc, StopRequested) or "stop requested" in str(exc)):
            log.info("stopped while waiting for Kafka/Redis; the unfinished batch was not committed and "
                     "will be re-read on the next start")
            return 0
        if STOP.is_set() and runner == "PrismRunner" and "UNAVAILABLE" in str(exc):
            # Ctrl-C (or a SIGTERM to the process group) also reaches the Prism binary, which ends first:
            # the stop was asked for, and nothing uncommitted is lost (offsets follow effects)
            log.info("stopped (the Prism runner process ended with the same signal); uncommitted input is "
                     "re-read on the next start")
            return 0
        raise
    log.info("stopped")
    return 0


def job_runner(cfg, args) -> tuple[str, list[str]]:
    """Apply `nearline run`'s options to cfg.job; (effective runner class name, Beam arguments)."""
    from nearline.launch.runners import beam_args as runner_args
    from nearline.stream.assignment import instance_from_hostname, static_groups

    j = cfg.job
    if args.runner:
        j.runner = args.runner
    if args.assignment:
        j.assignment = args.assignment
    if args.instances is not None:
        j.instances = args.instances
    if args.instance is not None:
        j.instance = instance_from_hostname() if args.instance == "auto" else _instance_index(args.instance)
    if args.metrics_port is not None:
        j.metrics_port = args.metrics_port
    if j.assignment == "static":
        static_groups(cfg.topics.partitions, j.instance, j.instances)  # a bad pair is a one-line error now
    return runner_args(j.runner, args.beam_args, j.prism_binary)


def _instance_index(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"--instance must be a number or 'auto', not {text!r}") from None


def cmd_tail(args) -> int:
    import numpy as np

    from nearline.io import kafka_io
    from nearline.io.codec import CodecError, codec_for
    from nearline.ops.health import require_kafka
    from nearline.ops.services import resolve_endpoints

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
                            from nearline.io.embedding_messages import read_message

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
    from nearline.consumers.client import EmbeddingClient
    from nearline.ops.health import require_redis
    from nearline.ops.services import resolve_endpoints

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


# ---- backfill / rebuild (nearline/offline/stage.py) ---------------------------------------------------
def cmd_backfill(args) -> int:
    from nearline.launch.backfill import run_backfill
    from nearline.offline.progress import BackfillError
    from nearline.ops.services import resolve_endpoints

    cfg = _cfg(args)
    bootstrap, redis_url = resolve_endpoints(cfg)
    if args.status:
        return backfill_status_report(cfg, redis_url, args.json)
    if args.runner == "dask":
        from nearline.launch.dask_cluster import dask_beam_args

        engine = dask_beam_args(args.workers, args.dask_scheduler)
    else:
        engine = contextlib.nullcontext([])
    try:
        with engine as engine_args:  # the Beam options of the engine (and, for a local Dask cluster, its lifetime)
            res = run_backfill(cfg, bootstrap, redis_url, models=args.models, all_models=args.all, dry_run=args.dry_run,
                               rescore=args.rescore, batch_size=args.batch_size, max_passes=args.max_passes,
                               beam_args=[*engine_args, *args.beam_args], progress=not args.no_progress)
    except BackfillError as exc:
        print(f"nearline backfill: {exc}", file=sys.stderr)
        return 2
    print(res.summary_line())
    if args.json:
        print(json.dumps({"models": res.models, "passes": res.passes, "seconds": round(res.seconds, 3), **res.counts.as_dict()}))
    return 1 if res.counts.failed else 0


def backfill_status_report(cfg, redis_url: str, as_json: bool) -> int:
    import redis

    from nearline.offline.status import backfill_status
    from nearline.ops.health import require_redis

    require_redis(redis_url)
    st = backfill_status(redis.Redis.from_url(redis_url), cfg.redis.key_prefix)
    if as_json:
        print(json.dumps(st))
        return 0
    if not st["running"]:
        print("no backfill running")
    for b in st["running"]:
        eta = f"{b['eta_s']:.0f}s left" if b["eta_s"] is not None else "time left unknown"
        state = "running" if b["alive"] else "NOT running (lease expired: the run died; rerun to continue)"
        print(f"{b['model']}: {state}, run {b['run']} on {b['host']} pid {b['pid']}: {b['percent']}% of the snapshot "
              f"({b['progress']}/{b['planned']} records), {b['entities']} entities, {b['written']} written, "
              f"{b['failed']} failed, {b['per_s']:.0f} records/s, {eta}")
    for m in st["requested"]:
        print(f"{m}: requested, not running (the job's launcher or `nearline backfill --models {m}` runs it)")
    for m, d in sorted(st["done"].items()):
        print(f"{m}: done, run {d.get('run')}: {d.get('written', 0)} written, {d.get('failed', 0)} failed")
    return 0


def cmd_demo(args) -> int:
    if args.dcs and args.dcs > 1:
        from nearline.multidc.demo import run_multidc_demo

        return run_multidc_demo(_cfg(args), args.dcs, args.rate, args.duration, args.members, args.jobs)
    from nearline.ops.demo import run_demo

    return run_demo(_cfg(args), args.config, args.rate, args.duration, args.members, args.jobs)

