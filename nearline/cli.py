"""`nearline` console script. Each subcommand is a thin wrapper around a module function."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from nearline.config import load_config


def _cfg(args):
    return load_config(args.config)


# ---- services ---------------------------------------------------------------------------------
def cmd_services(args) -> int:
    from nearline.services import LocalServices

    svc = LocalServices(_cfg(args))
    if args.action == "up":
        st = svc.up()
        print(f"kafka  {st.kafka_bootstrap}  ({st.broker if st.kafka_pid else 'external'}, pid {st.kafka_pid})")
        print(f"redis  {st.redis_url}  (pid {st.redis_pid or 'external'})")
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
        return 0 if st["kafka_up"] and st["redis_up"] else 1
    return 0


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
    from nearline.codec import Codec
    from nearline.marketplace.stream import UpdateStreamer, load_marketplace, publish
    from nearline.services import resolve_endpoints

    bootstrap, _ = resolve_endpoints(cfg)
    streamer = UpdateStreamer(load_marketplace(out), seed=args.seed)
    producer = kafka_io.make_producer(bootstrap, cfg.kafka.producer_linger_ms)
    counts = publish(streamer, producer, cfg.topics.entity_updates, Codec(), args.count, args.rate)
    producer.close()
    print(json.dumps(counts))
    return 0


# ---- standardizers ----------------------------------------------------------------------------
def cmd_standardize(args) -> int:
    from nearline.services import resolve_endpoints
    from nearline.standardize import run_processor

    cfg = _cfg(args)
    bootstrap, _ = resolve_endpoints(cfg)
    stats = run_processor(cfg, args.processor, bootstrap, max_messages=args.max_messages, idle_exit_s=args.idle_exit)
    print(json.dumps({"processor": args.processor, **stats}))
    return 0


# ---- models -----------------------------------------------------------------------------------
def cmd_models(args) -> int:
    from nearline.registry import Registry, check_package

    cfg = _cfg(args)
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
    try:
        from models.train import run_training
    except ImportError as exc:
        print(f"training needs the train extra (torch==2.13.0): pip install -e '.[train]' ({exc})", file=sys.stderr)
        return 2
    from nearline.registry import Registry

    cfg = _cfg(args)
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
        from models.evaluate import EvaluationError, run_evaluation
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

    from beam_jobs import nearline_job
    from nearline import metrics
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
    try:
        ensure_topics(bootstrap, cfg.all_topics(), cfg.topics.partitions, cfg.topics.replication_factor)
        metrics.serve(cfg.job.metrics_port)
        metrics.start_logger(cfg.job.log_every_s)
        log.info("nearline job: kafka %s, redis %s, runner %s, metrics :%s",
                 bootstrap, redis_url, cfg.job.runner, cfg.job.metrics_port)
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
    from nearline.codec import Codec
    from nearline.services import resolve_endpoints

    cfg = _cfg(args)
    bootstrap, _ = resolve_endpoints(cfg)
    topic = cfg.topics.dead_letter if args.dead_letters else cfg.topics.embeddings
    c = kafka_io.make_consumer(bootstrap, None, auto_offset_reset="earliest" if args.from_beginning else "latest")
    c.assign([kafka_io.TopicPartition(topic, p) for p in kafka_io.partitions_of(c, topic)])
    if not args.from_beginning:
        c.seek_to_end()
    codec, n = Codec(), 0
    try:
        while args.max is None or n < args.max:
            for msgs in c.poll(500).values():
                for m in msgs:
                    rec = codec.decode(m.value)
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
    return 0


def cmd_get(args) -> int:
    from nearline.client import EmbeddingClient

    client = EmbeddingClient.from_config(args.config)
    version, deleted, vecs = client.get_with_version(args.entity_type, args.entity_id)
    print(json.dumps({"entity": f"{args.entity_type}:{args.entity_id}", "version": version, "deleted": deleted,
                      "embeddings": {k: [round(float(x), 5) for x in v] for k, v in vecs.items()}}, indent=None if args.compact else 2))
    return 0 if vecs or deleted else 1


def cmd_demo(args) -> int:
    from nearline.demo import run_demo

    return run_demo(_cfg(args), args.config, args.rate, args.duration, args.members, args.jobs)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nearline", description="Nearline embedding service: keeps entity embeddings fresh in Redis and Kafka.")
    p.add_argument("--config", help="config file (default: $NEARLINE_CONFIG, ./nearline.yaml, or the repo's)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("demo", help="everything on local defaults: services, standardizers, the job, a steady stream, a live summary")
    s.add_argument("--rate", type=float, default=200.0, help="entity updates per second")
    s.add_argument("--duration", type=float, default=None, help="stop after this many seconds (default: until Ctrl-C)")
    s.add_argument("--members", type=int, default=2000, help="marketplace size if it must be generated")
    s.add_argument("--jobs", type=int, default=1000)
    s.set_defaults(func=cmd_demo)

    s = sub.add_parser("services", help="start/stop/inspect the local Redis and Apache Kafka broker")
    s.add_argument("action", choices=["up", "down", "status"])
    s.add_argument("--json", action="store_true", help="status as JSON (kafka_bootstrap, redis_url, PIDs)")
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

    s = sub.add_parser("tail", help="print decoded EntityEmbeddings records as they are published")
    s.add_argument("--from-beginning", action="store_true")
    s.add_argument("--dead-letters", action="store_true", help="tail the dead-letter topic instead")
    s.add_argument("--max", type=int, default=None, help="stop after this many records")
    s.set_defaults(func=cmd_tail)

    s = sub.add_parser("get", help="read an entity's embeddings from Redis")
    s.add_argument("entity_type")
    s.add_argument("entity_id")
    s.add_argument("--compact", action="store_true")
    s.set_defaults(func=cmd_get)

    s = sub.add_parser("models", help="list registered model versions or check every package")
    s.add_argument("action", choices=["list", "check"])
    s.set_defaults(func=cmd_models)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("kafka").setLevel(logging.WARNING)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
