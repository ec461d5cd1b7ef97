"""Two data centers on real parts: two Apache Kafka clusters, two Redis, MirrorMaker 2 between them, a
standardizer and a nearline job per DC. Updates are produced into both DCs (each entity has a home DC);
DC1's Redis, then separately DC1's job, go down under traffic. DC2 stays current throughout, a reader in
DC1 serves from DC2 during each outage and fails back after it, reads never go back in version, and DC1
catches up to the same end state as DC2 (every entity's embeddings bitwise equal across the DCs and equal
to onnxruntime on its final features)."""

import os
import signal
import statistics
import threading
import time
import zlib

import pytest

from nearline.config import Config
from nearline.consumers.client import EmbeddingClient
from nearline.consumers.failover import FailoverReader
from nearline.multidc.clusters import MultiDCServices
from tests.helpers import FEATURES, make_package
from tests.integration.harness import Harness, check_live_and_deleted

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TITLE_ONLY = {k: v for k, v in FEATURES.items() if v[0] == "title"}  # one standardizer per DC is enough
MUST = {"member": {"member_tt@v1"}, "job": {"job_tt@v1"}}


def _route(key: str) -> int:
    return zlib.crc32(key.encode()) % 2  # the entity's home DC


class Traffic:
    """Streams updates into both DCs (by home DC) and samples the cross-DC staleness: from an update
    produced in DC1 to its embedding readable in DC2's Redis (mirror + standardizer + job in DC2)."""

    def __init__(self, hs: list[Harness]):
        self.hs = hs
        self.staleness: list[float] = []

    def stream(self, n: int, rate: float) -> None:
        h0 = self.hs[0]
        start = time.monotonic()
        futs = []
        for i, ev in enumerate(h0.streamer.take(n)):
            wait = start + i / rate - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            h = self.hs[_route(ev.key)]
            futs.append(h.producer.send(h.cfg.topics.entity_updates, key=ev.key.encode(),
                                        value=h.codec.encode("EntityUpdate", ev.record)))
            for hh in self.hs:
                hh.events.append(ev)
            if i % 10 == 0 and ev.record["op"] == "UPSERT" and _route(ev.key) == 0:  # produced in DC1
                threading.Thread(target=self._sample, args=(ev.key, ev.record["version"], time.monotonic()),
                                 daemon=True).start()
        for h in self.hs:
            h.producer.flush()
        for f in futs:
            f.get(timeout=60)

    def _sample(self, key: str, version: int, t0: float) -> None:
        h2 = self.hs[1]
        etype, eid = key.split(":", 1)
        while time.monotonic() - t0 < 60:
            try:
                v = h2.stored(key).get("_v")
            except Exception:  # the test is tearing down
                return
            if v is not None and int(v) >= version:
                self.staleness.append(time.monotonic() - t0)
                return
            time.sleep(0.02)


class MonotonicReads:
    """A reader in DC1 reading live entities in a loop; records which DC answered and the versions."""

    def __init__(self, reader: FailoverReader, h: Harness):
        self.reader, self.h = reader, h
        self.served_by: dict[str, int] = {}
        self.regressions: list = []
        self.last: dict[str, int] = {}
        self.stop = threading.Event()
        self.errors: list[str] = []
        self.t = threading.Thread(target=self.loop, daemon=True)

    def loop(self):
        i = 0
        while not self.stop.is_set():
            keys = [e.key for e in self.h.events[-200:] if e.record["op"] == "UPSERT"]
            if keys:
                key = keys[i % len(keys)]
                i += 7
                try:
                    dc, raw = self.reader.get_raw(*key.split(":", 1))
                except Exception as exc:  # DC2 is up throughout: get_raw must always find a DC that answers
                    self.errors.append(f"{time.monotonic():.1f} {key}: {type(exc).__name__}: {exc}")
                    continue
                self.served_by[dc] = self.served_by.get(dc, 0) + 1
                if b"_v" in raw:
                    v = int(raw[b"_v"])
                    if v < self.last.get(key, -1):
                        self.regressions.append((key, self.last[key], v))
                    self.last[key] = max(v, self.last.get(key, -1))
            time.sleep(0.01)

    def window(self):
        self.served_by = {}
        return self


def _wait_caught_up(hs):
    for h in hs:
        h.wait_caught_up(timeout=240, processors=["title"])


def _assert_same_end_state(hs):
    n = [check_live_and_deleted(h, MUST) for h in hs]
    assert min(n) > 100
    for key in hs[0].final_state():
        a = {k: v for k, v in hs[0].stored(key).items() if not k.startswith("_")}
        b = {k: v for k, v in hs[1].stored(key).items() if not k.startswith("_")}
        assert a == b, f"{key}: DC1 and DC2 differ ({sorted(a)} vs {sorted(b)})"


def test_two_dcs_redis_then_job_outage_in_dc1(tmp_path, marketplace_dir):
    cfg = Config()
    svc = MultiDCServices(cfg, 2, tmp_path / "svc")
    t0 = time.monotonic()
    st = svc.up()
    up_s = time.monotonic() - t0
    ep = st["endpoints"]
    pk = tmp_path / "pk"
    lines = [str(make_package(pk, "member_tt", "v1", "member", seed=1, features=TITLE_ONLY)),
             str(make_package(pk, "job_tt", "v1", "job", seed=2, features=TITLE_ONLY))]
    hs = [Harness(tmp_path / name, svc.dc_config(name, ep), marketplace_dir, lines) for name in svc.names]
    hs[1].streamer = hs[0].streamer  # one source of truth for versions; events are routed by home DC
    traffic = Traffic(hs)
    client = EmbeddingClient(svc.dc_config("dc1", ep), ep["dc1"]["kafka_bootstrap"],
                             [ep["dc1"]["redis_url"], ep["dc2"]["redis_url"]], stale_after_s=4.0, timeout_s=0.3)
    reader = client.reader  # the client in DC1: its own DC first
    reader.probe_every_s = 1.0
    assert [e.name for e in reader.endpoints] == ["dc1", "dc2"]
    reads = MonotonicReads(reader, hs[0])
    report = {"services_up_s": round(up_s, 1)}
    try:
        for h in hs:
            h.start_standardizers(["title"])
            h.start_job()
        for h in hs:
            h.wait_log("partition group 3: reading", timeout=120)
        traffic.stream(400, rate=200)
        _wait_caught_up(hs)
        _assert_same_end_state(hs)
        report["staleness_no_fault"] = list(traffic.staleness)
        reads.t.start()
        time.sleep(1.0)
        assert reader.current_dc == "dc1" and reads.served_by.get("dc1", 0) > 0
        assert not reads.errors, reads.errors[:5]

        # ---- outage 1: DC1's Redis stops answering (SIGSTOP) under traffic ----
        traffic.staleness = []
        redis_pid = ep["dc1"]["redis_pid"]
        os.kill(redis_pid, signal.SIGSTOP)
        reads.window()
        try:
            traffic.stream(500, rate=200)
            time.sleep(2.0)
            during = dict(reads.served_by)
        finally:
            os.kill(redis_pid, signal.SIGCONT)
        assert during.get("dc2", 0) > 20 and during.get("dc1", 0) == 0, during
        assert any(s[:2] == ("dc1", "dc2") for s in reader.switches)
        assert not reads.errors, reads.errors[:5]  # DC1's Redis timed out: failed over, no read failed
        report["staleness_dc2_during_redis_outage"] = list(traffic.staleness)
        _wait_caught_up(hs)
        _assert_same_end_state(hs)
        deadline = time.monotonic() + 20
        while reader.current_dc != "dc1" and time.monotonic() < deadline:
            time.sleep(0.2)
        assert reader.current_dc == "dc1", reader.switches  # failed back

        # ---- outage 2: DC1's job dies under traffic; its Redis answers but goes stale ----
        traffic.staleness = []
        hs[0].kill_job()
        reads.window()
        traffic.stream(500, rate=200)
        time.sleep(6.0)  # past the heartbeat staleness bound
        during = dict(reads.served_by)
        assert during.get("dc2", 0) > 20, during
        assert not reads.errors, reads.errors[:5]  # DC1's stale heartbeat: failed over, no read failed
        report["staleness_dc2_during_job_outage"] = list(traffic.staleness)
        hs[0].start_job()
        _wait_caught_up(hs)
        _assert_same_end_state(hs)
        deadline = time.monotonic() + 30
        while reader.current_dc != "dc1" and time.monotonic() < deadline:
            time.sleep(0.2)
        assert reader.current_dc == "dc1", reader.switches
        assert reads.t.is_alive()  # the reader loop did not die of an exception outside get_raw
    finally:
        reads.stop.set()
        if reads.t.is_alive():
            reads.t.join(timeout=10)  # before the clients and servers go: no teardown errors in reads.errors
        client.close()
        for h in hs:
            h.stop_all()
        svc.down()
    assert not reads.regressions, reads.regressions[:5]
    assert reads.errors == [], reads.errors[:5]
    for k in [k for k in report if k.startswith("staleness")]:
        v = sorted(report[k])
        assert v, k
        print(f"{k}: n={len(v)} p50={statistics.median(v):.3f}s p99={v[int(0.99 * (len(v) - 1))]:.3f}s")
    print(f"services up (2 brokers, 2 redis, MirrorMaker 2): {report['services_up_s']}s; switches {reader.switches}")
