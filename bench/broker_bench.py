"""Local brokers compared (run on demand, not a test): Apache Kafka (KRaft, single node) vs noida-db.

  python bench/broker_bench.py [--messages 50000] [--size 200] [--repeat 3]

For each broker, in the same run on the same machine: start-up time of `services up` (until the broker
answers a metadata request), RSS of the broker process after the load, produce rate with kafka-python
(acks=all, linger 5 ms, the project's producer settings) and consume rate (one consumer, 4 partitions,
assigned). The broker the project ships as the default is Apache Kafka; the ratio column is Kafka's
figure over noida's (the baseline of the same run). Results go to stdout and docs/bench-broker.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.nearline_bench import rss_mb  # noqa: E402
from nearline.config import Config, ServicesConfig  # noqa: E402
from nearline.io import kafka_io  # noqa: E402
from nearline.io.kafka_io import TopicPartition  # noqa: E402
from nearline.ops.services import LocalServices  # noqa: E402


def one_broker(kind: str, n: int, size: int, repeat: int) -> dict:
    cfg = Config()
    cfg.services = ServicesConfig(broker=kind, kafka_port=0, redis_port=0)
    cfg.redis.url = "redis://unused:1/0"  # only the broker
    svc = LocalServices(cfg, Path(tempfile.mkdtemp(prefix=f"broker-bench-{kind}-")))
    t0 = time.monotonic()
    st = svc.up(create_topics=False)
    startup = time.monotonic() - t0
    out = {"broker": kind, "startup_s": round(startup, 2), "produce_msgs_s": [], "consume_msgs_s": []}
    value = b"x" * size
    try:
        for r in range(repeat):
            topic = f"bench-{r}"
            kafka_io.ensure_topics(st.kafka_bootstrap, [topic], 4)
            p = kafka_io.make_producer(st.kafka_bootstrap)
            t = time.monotonic()
            for i in range(n):
                p.send(topic, key=b"k%d" % (i % 1000), value=value)
            p.flush()
            out["produce_msgs_s"].append(n / (time.monotonic() - t))
            p.close()
            c = kafka_io.make_consumer(st.kafka_bootstrap, None, max_poll_records=2000)
            c.assign([TopicPartition(topic, i) for i in range(4)])
            c.seek_to_beginning()
            got, t = 0, time.monotonic()
            while got < n and time.monotonic() - t < 120:
                got += sum(len(m) for m in c.poll(200).values())
            out["consume_msgs_s"].append(got / (time.monotonic() - t))
            c.close()
        out["rss_mb"] = round(rss_mb(st.kafka_pid), 1)
    finally:
        svc.down()
    for k in ("produce_msgs_s", "consume_msgs_s"):
        out[k] = round(statistics.median(out[k]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=50_000)
    ap.add_argument("--size", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "docs" / "bench-broker.json"))
    a = ap.parse_args()
    rows = [one_broker(k, a.messages, a.size, a.repeat) for k in ("kafka", "noida")]
    kafka, noida = rows
    print(f"{'broker':8s} {'start-up s':>10s} {'RSS MB':>8s} {'produce/s':>10s} {'consume/s':>10s}")
    for r in rows:
        print(f"{r['broker']:8s} {r['startup_s']:10.2f} {r['rss_mb']:8.1f} {r['produce_msgs_s']:10d} {r['consume_msgs_s']:10d}")
    ratio = {k: round(kafka[k] / noida[k], 2) for k in ("startup_s", "rss_mb", "produce_msgs_s", "consume_msgs_s")}
    print("ratio kafka/noida: " + ", ".join(f"{k} {v}" for k, v in ratio.items()))
    Path(a.out).write_text(json.dumps({"messages": a.messages, "value_bytes": a.size, "rows": rows,
                                       "ratio_kafka_over_noida": ratio}, indent=2) + "\n")


if __name__ == "__main__":
    main()
