"""Benchmark of the nearline job (run on demand, not a test):

  python bench/nearline_bench.py [--entities 20000] [--backlog 10000] [--rate 300] [--seconds 30]
      [--configs baseline,fnapi,prism,fnapi-x2,prism-x2] [--idle-seconds 20] [--broker kafka|noida]
      [--out docs/bench-nearline.json] [--plot docs/plots/scaleout-cpu-per-update.png] [--keep-logs DIR]
  python bench/nearline_bench.py --replot docs/bench-nearline.json --plot docs/plots/scaleout-cpu-per-update.png

One run, one broker (`services.broker`, Apache Kafka by default, started by this bench on free ports with its
own Redis), one backlog, the same towers (3 registered versions of the shipped pyramid towers per entity type):

0. Standardization of the backlog: N entity updates are produced first, then the four standardizers
   (`nearline standardize --processor ...`) start and consume them; per standardizer: updates/s and CPU per
   update from its group assignment until its group has committed everything.
1. Backlog throughput, per configuration (each with its own consumer group, Redis prefix and output topics,
   so each reads the same backlog from scratch and dedupes against nothing):
     baseline   the job's stages (JoinStage, ScoreStage, PublishStage, CommitStage) in a plain Python loop
                over one kafka-python consumer, in this process: what Beam's runner costs is the ratio to it
     fnapi      `nearline run --runner fnapi` (one process)
     prism      `nearline run --runner prism` (the Python process and its child, the Prism binary)
     fnapi-x2   two processes `--instances 2 --instance I` (static split of the 4 partition groups)
     prism-x2   the same on Prism
   updates/s = the updates still uncommitted when every instance began reading / time until all committed;
   start-up (imports, pipeline construction, model loading, Prism's start) is reported apart.
   CPU seconds of EVERY process in that window (/proc utime+stime of each process tree: each job instance
   with its children, the broker, redis-server, each standardizer, this bench), CPU per update per process,
   % of a core per process, and the busiest one (the one that saturates first).
2. Idle: with no input, CPU % of a core of the job (each runner) and of each standardizer, broker, Redis.
3. Steady state: --rate updates/s for --seconds through the standardizers and a fnapi job (fresh group that
   starts at the end of the backlog); latency from the last standardizer message of an update to its
   published embedding (p50/p99), peak RSS of the job and its growth, and CPU per update of every process
   (the standardizers' steady figure vs their backlog figure is one of the ratios).
Ratios to the same-run baseline and the scale-out ratios (2 instances vs 1) are printed with their targets.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.cpu import Trees, descendants, processes  # noqa: E402
from nearline.config import Config, ServicesConfig  # noqa: E402
from nearline.io import kafka_io  # noqa: E402
from nearline.io.codec import Codec  # noqa: E402
from nearline.io.kafka_io import TopicPartition  # noqa: E402
from nearline.marketplace.generate import MarketplaceSpec, generate  # noqa: E402
from nearline.marketplace.stream import UpdateStreamer, load_marketplace  # noqa: E402
from nearline.ops.services import LocalServices  # noqa: E402

PROCS = ["title", "skills", "company", "geo"]
CONFIGS = {  # name -> (runner, instances); "baseline" is the plain loop
    "baseline": (None, 1), "fnapi": ("fnapi", 1), "prism": ("prism", 1),
    "fnapi-x2": ("fnapi", 2), "prism-x2": ("prism", 2),
}
TARGETS = {"x2_job_cpu_per_update": 1.15, "x2_updates_per_s": 1.4, "best_runner_vs_baseline": 0.8,
           "standardizers_steady_vs_backlog": 1.5}


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def tree_rss_mb(pid: int) -> float:
    return float(np.nansum([rss_mb(p) for p in descendants(pid, processes())]))


def make_registry(tmp: Path) -> Path:
    lines = []
    for side in ("member", "job"):
        src = ROOT / "models" / "packages" / f"{side}_pyramid" / "v1"
        for v in ("v1", "v2", "v3"):
            dst = tmp / "packages" / f"{side}_pyramid" / v
            shutil.copytree(src, dst)
            man = json.loads((dst / "manifest.json").read_text())
            man["version"] = v
            (dst / "manifest.json").write_text(json.dumps(man))
            lines.append(f"- {dst}")
    reg = tmp / "registry.yaml"
    reg.write_text("\n".join(lines) + "\n")
    return reg


class LagProbe:
    """Uncommitted messages of a group over some topics: one ListOffsets and one OffsetFetch per call (the
    bench polls it every 0.25 s, so it must be cheap for the broker and for this process)."""

    def __init__(self, bootstrap: str, topics: list[str], partitions: int):
        self.bootstrap, self.topics, self.partitions = bootstrap, topics, partitions
        self.tps = [TopicPartition(t, p) for t in topics for p in range(partitions)]
        self.consumer = kafka_io.make_consumer(bootstrap, None)
        self.admin = None
        try:
            from kafka import KafkaAdminClient

            self.admin = KafkaAdminClient(bootstrap_servers=bootstrap)
        except Exception:
            pass

    def ends(self) -> dict:
        return kafka_io.end_offsets(self.consumer, self.tps)

    def by_tp(self, group: str) -> dict:
        ends = self.ends()
        committed = {}
        if self.admin is not None:
            try:
                committed = {tp: m.offset for tp, m in self.admin.list_group_offsets({group: self.tps})[group].items()
                             if m is not None and m.offset is not None and m.offset >= 0}
            except Exception:
                self.admin = None  # a broker without it (noida): the slow way from now on
        if self.admin is None:
            c = kafka_io.make_consumer(self.bootstrap, group)
            try:
                committed = {tp: c.committed(tp, timeout_ms=10_000) or 0 for tp in self.tps}
            finally:
                c.close(autocommit=False)
        return {tp: max(0, ends[tp] - committed.get(tp, 0)) for tp in self.tps}

    def lag(self, group: str) -> int:
        return sum(self.by_tp(group).values())

    def by_partition(self, group: str) -> dict[int, int]:
        out = {p: 0 for p in range(self.partitions)}
        for tp, n in self.by_tp(group).items():
            out[tp.partition] += n
        return out

    def close(self):
        self.consumer.close(autocommit=False)
        if self.admin is not None:
            self.admin.close()


def account(s0, s1, wall: float, updates: float | None) -> dict:
    """Every process's CPU between two samples: seconds, % of a core, ms per update; the busiest process."""
    cpu = Trees.delta(s0, s1)
    busy, avail = Trees.machine_delta(s0, s1)
    ours = sum(cpu.values())
    out = {"wall_s": round(wall, 2),
           "cpu_s": {n: round(c, 2) for n, c in cpu.items()},
           "pct_core": {n: round(100 * c / wall, 1) for n, c in cpu.items()},
           "by_command": {n: {k: round(v, 2) for k, v in by.items() if v >= 0.005}
                          for n, by in Trees.delta_by_comm(s0, s1).items()},
           "machine_busy_pct_of_all_cores": round(100 * busy / avail, 1) if avail > 0 else None,
           "other_load_cores": round(max(0.0, busy - ours) / wall, 2)}
    if updates:
        out["ms_per_update"] = {n: round(1000 * c / updates, 3) for n, c in cpu.items()}
    busiest = max(cpu, key=cpu.get) if cpu else None
    out["busiest"] = busiest
    out["busiest_pct_core"] = round(100 * cpu[busiest] / wall, 1) if busiest else None
    return out


def print_account(title: str, acc: dict) -> None:
    print(f"    {title}: {acc['wall_s']:.1f}s wall; machine {acc['machine_busy_pct_of_all_cores']}% busy of "
          f"{os.cpu_count()} cores (load from outside this bench: {acc['other_load_cores']:.2f} cores)", flush=True)
    per = acc.get("ms_per_update")
    print(f"      {'process':<16}{'CPU s':>8}{'% core':>9}" + (f"{'ms/update':>11}" if per else ""))
    for n in sorted(acc["cpu_s"], key=lambda k: -acc["cpu_s"][k]):
        extra = ""
        by = acc["by_command"].get(n, {})
        if len(by) > 1:
            extra = "   (" + ", ".join(f"{k} {v:.2f}s" for k, v in sorted(by.items(), key=lambda kv: -kv[1])) + ")"
        mark = "  <- busiest" if n == acc["busiest"] else ""
        print(f"      {n:<16}{acc['cpu_s'][n]:>8.2f}{acc['pct_core'][n]:>9.1f}"
              + (f"{per[n]:>11.3f}" if per else "") + mark + extra)
    print(flush=True)


class Bench:
    def __init__(self, args):
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="nearline-bench-"))
        cfg = Config()
        cfg.services = ServicesConfig(broker=args.broker, kafka_port=0, redis_port=0)
        self.svc = LocalServices(cfg, self.tmp / "services")
        st = self.svc.up()
        cfg.kafka.bootstrap, cfg.redis.url = st.kafka_bootstrap, st.redis_url
        self.service_pids = {"broker": st.kafka_pid, "redis": st.redis_pid}
        self.cfg = cfg
        self.data = self.tmp / "marketplace"
        generate(MarketplaceSpec(members=args.entities * 2 // 3, jobs=args.entities // 3, seed=7), self.data, progress=False)
        self.registry = make_registry(self.tmp)
        self.procs: dict[str, subprocess.Popen] = {}
        self.codec = Codec()
        self.seen_pids: dict[int, str] = {}  # every process seen in a job's tree (pid -> comm), for clean-up
        self.problems: list[dict] = []

    # ---- processes ------------------------------------------------------------------------------------

    def config_file(self, name: str, cfg: Config) -> Path:
        t = cfg.topics
        conf = {"topics": {"entity_updates": t.entity_updates, "standardized_prefix": t.standardized_prefix,
                           "embeddings": t.embeddings, "dead_letter": t.dead_letter,
                           "feature_snapshot": t.feature_snapshot},
                "kafka": {"bootstrap": cfg.kafka.bootstrap, "consumer_group": cfg.kafka.consumer_group},
                "redis": {"url": cfg.redis.url, "key_prefix": cfg.redis.key_prefix},
                "job": {"metrics_port": 0, "log_every_s": 5},
                "standardizers": {"taxonomy_dir": str(self.data)}, "models": {"registry": str(self.registry)}}
        p = self.tmp / f"{name}.yaml"
        p.write_text(yaml.safe_dump(conf))
        return p

    def job_cfg(self, name: str) -> Config:
        """A config of its own for one measured job: consumer group, Redis prefix and output topics."""
        c = replace(self.cfg)
        c.kafka = replace(self.cfg.kafka, consumer_group=f"bench-{name}")
        c.redis = replace(self.cfg.redis, key_prefix=f"bench-{name}")
        c.topics = replace(self.cfg.topics, embeddings=f"bench-{name}-embeddings", dead_letter=f"bench-{name}-dl",
                           feature_snapshot=f"bench-{name}-snapshot")
        return c

    def spawn(self, name, conf: Path, args):
        self.procs[name] = subprocess.Popen([sys.executable, "-m", "nearline.cli", "--config", str(conf), *args],
                                            stdout=open(self.tmp / f"{name}.log", "ab"), stderr=subprocess.STDOUT,
                                            env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True)
        return self.procs[name]

    def stop(self, name, sig=signal.SIGTERM) -> dict:
        """SIGTERM to the process itself (as Kubernetes does to a container's main process; its children,
        e.g. the Prism binary, are its to stop), up to 60 s, then SIGKILL to its whole process group.
        Returns how it went: seconds to stop, exit code, and whether the group had to be killed."""
        p = self.procs.pop(name)
        t = time.monotonic()
        try:
            os.kill(p.pid, sig)
        except ProcessLookupError:
            pass
        killed = False
        try:
            p.wait(timeout=60)
        except subprocess.TimeoutExpired:
            print(f"    {name} did not stop within 60 s of SIGTERM: SIGKILL", flush=True)
            killed = True
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(timeout=30)
        try:
            os.killpg(p.pid, signal.SIGKILL)  # anything of its group still running after it exited
        except (ProcessLookupError, PermissionError):
            pass
        return {"stop_s": round(time.monotonic() - t, 2), "rc": p.returncode, "killed": killed}

    def remember(self, sample, names: list[str]) -> None:
        procs = processes()
        for n in names:
            for pid in sample.pids.get(n, []):
                if pid in procs:
                    self.seen_pids[pid] = procs[pid][0]

    def kill_leftovers(self):
        """Processes once seen in a job's tree (e.g. a Prism binary in a session of its own) still alive after
        the job stopped: killed by pid (only if the pid still runs the same command)."""
        procs = processes()
        for pid, comm in list(self.seen_pids.items()):
            if pid in procs and procs[pid][0] == comm:
                print(f"    left over after its job stopped: pid {pid} ({comm}); killing it", flush=True)
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self.seen_pids.pop(pid, None)

    def log(self, name: str) -> str:
        try:
            return (self.tmp / f"{name}.log").read_text(errors="replace")
        except OSError:
            return ""

    def warnings(self, name: str) -> list[str]:
        """The warning/error lines of a process's log (Beam's import-time note about apitools left out)."""
        return [ln for ln in self.log(name).splitlines()
                if re.search(r"WARNING|ERROR|Traceback|Exception|CRITICAL", ln) and "apitools not found" not in ln]

    def log_excerpt(self, name: str, n: int = 15) -> list[str]:
        """The warnings/errors of a process's log, else its last lines."""
        bad = self.warnings(name)
        return bad[-n:] if bad else self.log(name).splitlines()[-n:]

    def base_trees(self) -> Trees:
        t = Trees()
        for n, pid in self.service_pids.items():
            if pid:
                t.add(n, pid)
        for p in PROCS:
            if f"std-{p}" in self.procs:
                t.add(f"std-{p}", self.procs[f"std-{p}"].pid)
        t.add("bench", os.getpid(), alone=True)
        return t

    # ---- Kafka helpers (kept for the other benches and the steady phase) --------------------------------

    def lag(self, group: str, topics: list[str]) -> int:
        return kafka_io.group_lag(self.cfg.kafka.bootstrap, group, topics, self.cfg.topics.partitions)

    def wait_zero_lag(self, group, topics, timeout=900, pid=None, rss=None) -> float:
        t0 = time.monotonic()
        while self.lag(group, topics):
            if pid and rss is not None:
                rss.append(rss_mb(pid))
            if time.monotonic() - t0 > timeout:
                raise TimeoutError(f"{group} still lagging after {timeout}s")
            time.sleep(0.25)
        return time.monotonic() - t0

    def produce(self, topic, n, rate=0.0, streamer=None):
        streamer = streamer or UpdateStreamer(load_marketplace(self.data), seed=3)
        prod = kafka_io.make_producer(self.cfg.kafka.bootstrap)
        t0 = time.monotonic()
        for i, ev in enumerate(streamer.take(n)):
            if rate:
                w = t0 + i / rate - time.monotonic()
                if w > 0:
                    time.sleep(w)
            prod.send(topic, key=ev.key.encode(), value=self.codec.encode("EntityUpdate", ev.record))
        prod.flush()
        prod.close()
        return streamer

    def latencies(self, cfg: Config, since_ms: int) -> np.ndarray:
        def read(topic):
            return [self.codec.decode(m.value)  # not tombstones
                    for m in kafka_io.read_topic(cfg.kafka.bootstrap, topic, cfg.topics.partitions, None)
                    if m.value is not None]
        last_std = {}
        for p in PROCS:
            for r in read(cfg.standardized_topic(p)):
                k = (r["entity_type"], r["entity_id"], r["version"])
                last_std[k] = max(last_std.get(k, 0), r["produced_at"])
        lat = [r["embeddings"][0]["produced_at"] - last_std[(r["entity_type"], r["entity_id"], r["version"])]
               for r in read(cfg.topics.embeddings)
               if r["embeddings"] and (r["entity_type"], r["entity_id"], r["version"]) in last_std
               and last_std[(r["entity_type"], r["entity_id"], r["version"])] >= since_ms]
        return np.asarray(lat, dtype=float)

    # ---- phases -----------------------------------------------------------------------------------------

    def standardize_backlog(self, n: int) -> dict:
        """Produce the backlog with no standardizer running, then start the four; each one's window runs from
        its group assignment (start-up excluded) until its group has committed all n updates."""
        cfg = self.cfg
        t = time.monotonic()
        self.produce(cfg.topics.entity_updates, n)
        produce_s = time.monotonic() - t
        std_conf = self.config_file("std", cfg)
        probe = LagProbe(cfg.kafka.bootstrap, cfg.update_topics(), cfg.topics.partitions)
        for p in PROCS:
            self.spawn(f"std-{p}", std_conf, ["standardize", "--processor", p])
        trees = self.base_trees()
        start, end = {}, {}
        deadline = time.monotonic() + self.args.timeout
        while len(end) < len(PROCS):
            for p in PROCS:
                name = f"std-{p}"
                if self.procs[name].poll() is not None:
                    raise RuntimeError(f"{name} exited: {self.log_excerpt(name)}")
                if p not in start and re.search(r"partitions assigned \[\d", self.log(name)):
                    start[p] = (time.monotonic(), trees.sample())
                elif p in start and p not in end and probe.lag(cfg.standardizers.group(p)) == 0:
                    end[p] = (time.monotonic(), trees.sample())
            if time.monotonic() > deadline:
                raise TimeoutError(f"standardizers still lagging after {self.args.timeout}s: "
                                   f"{ {p: probe.lag(cfg.standardizers.group(p)) for p in PROCS} }")
            time.sleep(0.1)
        probe.close()
        out = {"updates": n, "produce_s": round(produce_s, 1), "per_standardizer": {}}
        for p in PROCS:
            (t0, s0), (t1, s1) = start[p], end[p]
            cpu = Trees.delta(s0, s1)[f"std-{p}"]
            out["per_standardizer"][p] = {"updates_per_s": round(n / (t1 - t0)), "wall_s": round(t1 - t0, 2),
                                          "cpu_s": round(cpu, 2), "ms_per_update": round(1000 * cpu / n, 3),
                                          "pct_core": round(100 * cpu / (t1 - t0), 1)}
        first = min(start.values(), key=lambda x: x[0])
        last = max(end.values(), key=lambda x: x[0])
        out["all"] = account(first[1], last[1], last[0] - first[0], n)
        out["updates_per_s_all_four"] = round(n / (last[0] - first[0]))
        return out

    def wait_reading(self, names: dict[str, list[int]], timeout: float = 300) -> None:
        """Until each job instance logged 'partition group p: reading' for every group it owns."""
        deadline = time.monotonic() + timeout
        while True:
            missing = {}
            for name, groups in names.items():
                if self.procs[name].poll() is not None:
                    raise RuntimeError(f"{name} exited during start-up (rc {self.procs[name].returncode}):\n"
                                       + "\n".join(self.log_excerpt(name, 30)))
                text = self.log(name)
                gone = [g for g in groups if f"partition group {g}: reading" not in text]
                if gone:
                    missing[name] = gone
            if not missing:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"not reading after {timeout}s: {missing}")
            time.sleep(0.05)

    def job_phase(self, name: str, runner: str, instances: int, n_backlog: int, total_inputs: int,
                  idle_s: float) -> dict:
        cfg = self.job_cfg(name)
        conf = self.config_file(name, cfg)
        parts = cfg.topics.partitions
        owned = {(f"{name}#{i}" if instances > 1 else name): [g for g in range(parts) if g % instances == i]
                 for i in range(instances)}
        print(f"[{name}] {runner}, {instances} instance(s): starting ...", flush=True)
        t_spawn = time.monotonic()
        for i, pname in enumerate(owned):
            args = ["run", "--runner", runner, "--metrics-port", "0"]
            if instances > 1:
                args += ["--instances", str(instances), "--instance", str(i)]
            self.spawn(pname, conf, args)
        res = {"runner": runner, "instances": instances}
        probe = LagProbe(cfg.kafka.bootstrap, cfg.input_topics(), parts)
        try:
            self.wait_reading(owned)
            startup = time.monotonic() - t_spawn
            trees = self.base_trees()
            for pname in owned:
                trees.add(pname, self.procs[pname].pid)
            s0 = trees.sample()
            t0 = time.monotonic()
            lag0 = probe.lag(cfg.kafka.consumer_group)
            updates = n_backlog * lag0 / total_inputs
            done: dict[str, float] = {}
            peak_rss = {pname: 0.0 for pname in owned}
            next_rss = 0.0
            timed_out = False
            while len(done) < len(owned):
                lag = probe.by_partition(cfg.kafka.consumer_group)
                now = time.monotonic()
                for pname, groups in owned.items():
                    if pname not in done and sum(lag[g] for g in groups) == 0:
                        done[pname] = now - t0
                    if self.procs[pname].poll() is not None and pname not in done:
                        raise RuntimeError(f"{pname} exited while consuming (rc {self.procs[pname].returncode}):\n"
                                           + "\n".join(self.log_excerpt(pname, 30)))
                if now >= next_rss:
                    for pname in owned:
                        peak_rss[pname] = max(peak_rss[pname], tree_rss_mb(self.procs[pname].pid))
                    next_rss = now + 1.0
                if now - t0 > self.args.timeout:
                    timed_out = True
                    self.problems.append({
                        "config": name, "what": f"not caught up after {self.args.timeout:.0f}s",
                        "lag_by_partition": lag,
                        "instances": {p: {"groups": g, "done_s": done.get(p), "log": self.log_excerpt(p, 20)}
                                      for p, g in owned.items()}})
                    print(f"    PROBLEM: {name} not caught up after {self.args.timeout:.0f}s, lag by partition {lag}",
                          flush=True)
                    break
                time.sleep(0.25)
            s1 = trees.sample()
            elapsed = time.monotonic() - t0
            self.remember(s1, list(owned))
            if timed_out:
                done_updates = n_backlog * (lag0 - probe.lag(cfg.kafka.consumer_group)) / total_inputs
                res.update({"timed_out": True, "updates_done": round(done_updates)})
                updates = done_updates
            acc = account(s0, s1, elapsed, updates)
            job_names = list(owned)
            job_cpu = sum(acc["cpu_s"].get(p, 0.0) for p in job_names)
            res.update({
                "startup_s": round(startup, 1), "updates": round(updates), "elapsed_s": round(elapsed, 2),
                "updates_per_s": round(updates / elapsed, 1), "instance_done_s": {p: round(v, 2) for p, v in done.items()},
                "job_cpu_s": round(job_cpu, 2), "job_ms_per_update": round(1000 * job_cpu / updates, 3),
                "job_peak_rss_mb": {p: round(v, 1) for p, v in peak_rss.items()}, **acc})
            print(f"    start-up {startup:.1f}s, then {updates:.0f} updates in {elapsed:.1f}s = "
                  f"{updates / elapsed:.0f} updates/s; job CPU {job_cpu:.1f}s = {1000 * job_cpu / updates:.2f} ms/update"
                  + (f"; instances done at {res['instance_done_s']}" if instances > 1 else ""), flush=True)
            print_account(f"{name} backlog", acc)
            if idle_s and not timed_out:
                res["idle"] = self.idle(trees, idle_s, name)
        finally:
            probe.close()
            stops = {}
            for pname in owned:
                if pname in self.procs:
                    stops[pname] = self.stop(pname)
            res["stop"] = stops
            bad = {p: v for p, v in stops.items() if v["rc"] != 0 or v["killed"]}
            if bad:
                print(f"    stop not clean: {bad}", flush=True)
            self.kill_leftovers()
            warn = {p: self.warnings(p) for p in owned}
            res["log_warnings"] = {p: {"count": len(w), "first": w[:8]} for p, w in warn.items() if w}
            for p, w in warn.items():
                if w:
                    print(f"    {p}: {len(w)} warning/error lines in its log, first: {w[0][:300]}", flush=True)
        return res

    def idle(self, trees: Trees, seconds: float, name: str) -> dict:
        time.sleep(3.0)  # the last commits and lag reports settle
        s0 = trees.sample()
        t0 = time.monotonic()
        time.sleep(seconds)
        acc = account(s0, trees.sample(), time.monotonic() - t0, None)
        print_account(f"{name} idle, no input", acc)
        return acc

    def baseline(self, cfg: Config, n_updates: int, trees: Trees | None = None) -> float | dict:
        """The same stages, no Beam: one consumer over every input partition, one batch per poll. Without
        ``trees``: updates/s (the original figure); with: a dict with the CPU account of the consuming window."""
        from nearline.inference.scoring import ModelSet, RegistryWatcher
        from nearline.io.store import RedisEmbeddingStore
        from nearline.registry.packages import Registry
        from nearline.stream.pipeline import CommitStage, JoinStage, KafkaRecord, PublishStage, RecordBatch, ScoreStage

        watcher = RegistryWatcher(Registry(self.registry), cfg.entity_types)
        models = ModelSet(watcher)
        join = JoinStage(cfg)
        state = join.new_state(watcher.required())
        score = ScoreStage(models)
        prod = kafka_io.make_producer(cfg.kafka.bootstrap)
        publish = PublishStage(cfg, RedisEmbeddingStore(cfg.redis.url, cfg.redis.key_prefix), prod)
        committer = kafka_io.make_consumer(cfg.kafka.bootstrap, cfg.kafka.consumer_group)
        commit = CommitStage(committer)
        import gc  # the same process settings as `nearline run` (beam_jobs/nearline_job.run), for a fair ratio

        gc.collect()
        gc.freeze()
        gc.set_threshold(50_000, 20, 100)
        c = kafka_io.make_consumer(cfg.kafka.bootstrap, cfg.kafka.consumer_group, max_poll_records=1000)
        c.assign([TopicPartition(t, p) for t in cfg.input_topics() for p in range(cfg.topics.partitions)])
        c.seek_to_beginning()
        s0 = trees.sample() if trees else None
        t0 = time.monotonic()
        idle = 0
        t_last = t0
        while idle < 3:
            polled = c.poll(timeout_ms=200, max_records=1000)
            recs = [KafkaRecord(m.topic, m.partition, m.offset, m.key, m.value) for ms in polled.values() for m in ms]
            if not recs:
                idle += 1
                continue
            idle = 0
            commit.run(publish.run(score.run(join.run(state, 0, RecordBatch(recs, time.time()), watcher.required()))))
            t_last = time.monotonic()
        s1 = trees.sample() if trees else None
        wall = time.monotonic() - t0
        elapsed = t_last - t0  # until the last batch was committed (the idle polls that end the loop excluded)
        c.close()
        committer.close()
        prod.close()
        if trees is None:
            return n_updates / elapsed
        acc = account(s0, s1, wall, n_updates)  # CPU: the idle tail is ~0.6 s of polling
        return {"runner": None, "instances": 1, "updates": n_updates, "elapsed_s": round(elapsed, 2),
                "updates_per_s": round(n_updates / elapsed, 1), "job_cpu_s": acc["cpu_s"]["bench"],
                "job_ms_per_update": acc["ms_per_update"]["bench"], **acc}

    def baseline_phase(self, n_backlog: int) -> dict:
        print("[baseline] the same stages in a plain loop in this process (no Beam) ...", flush=True)
        cfg = self.job_cfg("baseline")
        kafka_io.ensure_topics(cfg.kafka.bootstrap, cfg.all_topics(), cfg.topics.partitions)
        res = self.baseline(cfg, n_backlog, trees=self.base_trees())
        print(f"    {n_backlog} updates in {res['elapsed_s']:.1f}s = {res['updates_per_s']:.0f} updates/s; loop CPU "
              f"{res['job_cpu_s']:.1f}s = {res['job_ms_per_update']:.2f} ms/update", flush=True)
        print_account("baseline backlog ('bench' is the plain loop)", res)
        return res

    def steady_phase(self) -> dict:
        """A fnapi job on a fresh group that starts at the end of what is there, fed at --rate for --seconds."""
        a = self.args
        name = "steady"
        cfg = self.job_cfg(name)
        parts = cfg.topics.partitions
        # the group starts where the backlog ends
        c = kafka_io.make_consumer(cfg.kafka.bootstrap, cfg.kafka.consumer_group)
        tps = [TopicPartition(t, p) for t in cfg.input_topics() for p in range(parts)]
        kafka_io.commit(c, kafka_io.end_offsets(c, tps), timeout_ms=30_000)
        c.close(autocommit=False)
        conf = self.config_file(name, cfg)
        print(f"[steady] {a.rate:g} updates/s for {a.seconds:g}s through the standardizers and a fnapi job ...",
              flush=True)
        job = self.spawn(name, conf, ["run", "--runner", a.steady_runner, "--metrics-port", "0"])
        probe = LagProbe(cfg.kafka.bootstrap, cfg.input_topics(), parts)
        std_probe = LagProbe(cfg.kafka.bootstrap, cfg.update_topics(), parts)
        try:
            self.wait_reading({name: list(range(parts))})
            time.sleep(2.0)
            trees = self.base_trees()
            trees.add(name, job.pid)
            since = int(time.time() * 1000)
            rss_steady = []
            stop = threading.Event()

            def sample():
                while not stop.wait(0.5):
                    rss_steady.append((time.monotonic(), tree_rss_mb(job.pid)))

            th = threading.Thread(target=sample, daemon=True)
            th.start()
            n = int(a.rate * a.seconds)
            s0 = trees.sample()
            t0 = time.monotonic()
            self.produce(cfg.topics.entity_updates, n, rate=a.rate,
                         streamer=UpdateStreamer(load_marketplace(self.data), seed=99))
            produce_s = time.monotonic() - t0
            deadline = time.monotonic() + a.timeout
            while (probe.lag(cfg.kafka.consumer_group)
                   or any(std_probe.lag(cfg.standardizers.group(p)) for p in PROCS)):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"steady job still lagging after {a.timeout}s")
                time.sleep(0.25)
            s1 = trees.sample()
            acc = account(s0, s1, time.monotonic() - t0, n)
            self.remember(s1, [name])
            stop.set()
            th.join()
            drain_s = time.monotonic() - t0 - produce_s
            lat = self.latencies(cfg, since)
            t = np.array([x[0] for x in rss_steady])
            r = np.array([x[1] for x in rss_steady])
            slope = float(np.polyfit(t - t[0], r, 1)[0]) if len(t) > 3 else float("nan")
            res = {"runner": a.steady_runner, "rate": a.rate, "seconds": a.seconds, "updates": n,
                   "achieved_rate": round(n / produce_s, 1), "drain_after_last_send_s": round(drain_s, 2),
                   "latency_ms_p50": round(float(np.percentile(lat, 50)), 1) if len(lat) else None,
                   "latency_ms_p99": round(float(np.percentile(lat, 99)), 1) if len(lat) else None,
                   "latency_samples": int(len(lat)),
                   "job_peak_rss_mb": round(float(r.max()), 1) if len(r) else None,
                   "job_rss_growth_mb_per_min": round(slope * 60, 2),
                   "job_ms_per_update": acc["ms_per_update"][name], **acc}
            print(f"    latency p50 {res['latency_ms_p50']} ms, p99 {res['latency_ms_p99']} ms "
                  f"({res['latency_samples']} samples); job RSS peak {res['job_peak_rss_mb']} MB, growth "
                  f"{res['job_rss_growth_mb_per_min']} MB/min", flush=True)
            print_account(f"steady {a.rate:g}/s", acc)
            return res
        finally:
            probe.close()
            std_probe.close()
            if name in self.procs:
                self.stop(name)
            self.kill_leftovers()

    # ---- the run ----------------------------------------------------------------------------------------

    def run(self):
        a = self.args
        cfg = self.cfg
        t_run = time.monotonic()
        kafka_io.ensure_topics(cfg.kafka.bootstrap, cfg.all_topics(), cfg.topics.partitions)
        res = {"date": time.strftime("%Y-%m-%d"), "machine": machine(), "broker": a.broker,
               "models_per_entity_type": 3, "backlog_updates": a.backlog, "entities": a.entities,
               "command": "python bench/nearline_bench.py " + " ".join(sys.argv[1:])}
        print(f"[standardize] producing {a.backlog} entity updates, then the four standardizers consume them ...",
              flush=True)
        res["standardize_backlog"] = sb = self.standardize_backlog(a.backlog)
        for p, v in sb["per_standardizer"].items():
            print(f"    {p:<8} {v['updates_per_s']:>6} updates/s  {v['ms_per_update']:.3f} ms/update  "
                  f"{v['pct_core']}% of a core", flush=True)
        print_account("standardizing the backlog (all four)", sb["all"])
        probe = LagProbe(cfg.kafka.bootstrap, cfg.input_topics(), cfg.topics.partitions)
        total_inputs = sum(probe.ends().values())
        probe.close()
        res["input_messages"] = total_inputs
        configs = res["configs"] = {}
        idle_done = set()
        for name in a.configs:
            runner, instances = CONFIGS[name]
            try:
                if runner is None:
                    configs[name] = self.baseline_phase(a.backlog)
                else:
                    idle = a.idle_seconds if instances == 1 and runner not in idle_done else 0
                    configs[name] = self.job_phase(name, runner, instances, a.backlog, total_inputs, idle)
                    if idle:
                        idle_done.add(runner)
            except Exception as exc:
                print(f"    PROBLEM in {name}: {exc}", flush=True)
                self.problems.append({"config": name, "what": str(exc)[:4000]})
            print(f"    (bench running {time.monotonic() - t_run:.0f}s)", flush=True)
        if a.seconds > 0:
            try:
                res["steady"] = self.steady_phase()
            except Exception as exc:
                print(f"    PROBLEM in steady: {exc}", flush=True)
                self.problems.append({"config": "steady", "what": str(exc)[:4000]})
        res["ratios"] = ratios(res)
        res["problems"] = self.problems
        res["bench_wall_s"] = round(time.monotonic() - t_run)
        legacy(res)
        summary(res)
        return res

    def close(self):
        for name in list(self.procs):
            try:
                self.stop(name)
            except Exception:
                pass
        self.kill_leftovers()
        self.svc.down()
        if self.args.keep_logs:
            dst = Path(self.args.keep_logs)
            dst.mkdir(parents=True, exist_ok=True)
            for f in list(self.tmp.glob("*.log")) + list((self.tmp / "services").glob("*.log")):
                shutil.copy(f, dst / f.name)
            print(f"logs: {dst}")
        shutil.rmtree(self.tmp, ignore_errors=True)


def machine() -> dict:
    model = ""
    try:
        model = next(ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                     if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cores": os.cpu_count(), "cpu": model, "python": platform.python_version(),
            "load_avg_at_start": [round(x, 2) for x in os.getloadavg()]}


def ratio(value, target, higher_is_better: bool) -> dict | None:
    if value is None:
        return None
    if target is None:
        return {"value": round(value, 3)}
    return {"value": round(value, 3), "target": target,
            "met": bool(value >= target if higher_is_better else value <= target)}


def ratios(res: dict) -> dict:
    c = res["configs"]
    out = {}

    def ok(n):
        return n in c and not c[n].get("timed_out") and c[n].get("updates_per_s")

    for r in ("fnapi", "prism"):
        if ok(r) and ok(f"{r}-x2"):
            out[f"{r}_x2_vs_x1_job_cpu_per_update"] = ratio(
                c[f"{r}-x2"]["job_ms_per_update"] / c[r]["job_ms_per_update"], TARGETS["x2_job_cpu_per_update"], False)
            out[f"{r}_x2_vs_x1_updates_per_s"] = ratio(
                c[f"{r}-x2"]["updates_per_s"] / c[r]["updates_per_s"], TARGETS["x2_updates_per_s"], True)
        if ok(r) and ok("baseline"):
            out[f"{r}_vs_baseline_updates_per_s"] = ratio(
                c[r]["updates_per_s"] / c["baseline"]["updates_per_s"], TARGETS["best_runner_vs_baseline"], True)
            out[f"{r}_vs_baseline_job_cpu_per_update"] = ratio(
                c[r]["job_ms_per_update"] / c["baseline"]["job_ms_per_update"], None, False)
    single = [r for r in ("fnapi", "prism") if ok(r)]
    if single and ok("baseline"):
        best = max(single, key=lambda r: c[r]["updates_per_s"])
        out["best_runner"] = best
        out["best_runner_vs_baseline_updates_per_s"] = ratio(
            c[best]["updates_per_s"] / c["baseline"]["updates_per_s"], TARGETS["best_runner_vs_baseline"], True)
    st = res.get("steady")
    if st:
        back = res["standardize_backlog"]["per_standardizer"]
        for p in PROCS:
            out[f"std_{p}_steady_vs_backlog_cpu_per_update"] = ratio(
                st["ms_per_update"][f"std-{p}"] / back[p]["ms_per_update"], TARGETS["standardizers_steady_vs_backlog"], False)
        tot_steady = sum(st["ms_per_update"][f"std-{p}"] for p in PROCS)
        tot_back = sum(back[p]["ms_per_update"] for p in PROCS)
        out["standardizers_steady_vs_backlog_cpu_per_update"] = ratio(
            tot_steady / tot_back, TARGETS["standardizers_steady_vs_backlog"], False)
    return {k: v for k, v in out.items() if v is not None}


def legacy(res: dict) -> None:
    """The keys of the earlier single-runner result file, from the fnapi and steady figures."""
    c = res["configs"]
    if "fnapi" in c and "updates_per_s" in c["fnapi"]:
        res["beam_startup_s"] = c["fnapi"]["startup_s"]
        res["beam_updates_per_s"] = round(c["fnapi"]["updates_per_s"])
    if "baseline" in c:
        res["baseline_updates_per_s"] = round(c["baseline"]["updates_per_s"])
    if "beam_updates_per_s" in res and "baseline_updates_per_s" in res:
        res["beam_to_baseline_ratio"] = round(res["beam_updates_per_s"] / res["baseline_updates_per_s"], 3)
    st = res.get("steady")
    if st:
        res.update({"steady_rate": st["rate"], "latency_ms_p50": st["latency_ms_p50"],
                    "latency_ms_p99": st["latency_ms_p99"], "latency_samples": st["latency_samples"],
                    "job_peak_rss_mb": st["job_peak_rss_mb"], "job_rss_growth_mb_per_min_steady": st["job_rss_growth_mb_per_min"]})


def summary(res: dict) -> None:
    c = res["configs"]
    base = c.get("baseline", {}).get("updates_per_s")
    print("\n=== backlog of", res["backlog_updates"], "updates,", res["broker"], "broker ===")
    print(f"{'config':<10}{'updates/s':>10}{'vs base':>9}{'job ms/upd':>12}{'vs base':>9}{'start-up s':>11}"
          f"{'outside load':>14}  busiest process")
    for n, v in c.items():
        if "updates_per_s" not in v:
            print(f"{n:<10}  failed")
            continue
        vs = f"{v['updates_per_s'] / base:.2f}" if base else "-"
        vc = (f"{v['job_ms_per_update'] / c['baseline']['job_ms_per_update']:.2f}"
              if "baseline" in c and "job_ms_per_update" in c["baseline"] else "-")
        print(f"{n:<10}{v['updates_per_s']:>10.0f}{vs:>9}{v['job_ms_per_update']:>12.3f}{vc:>9}"
              f"{v.get('startup_s', '-'):>11}{v['other_load_cores']:>9.2f} cores  {v['busiest']} {v['busiest_pct_core']}% of a core"
              + ("  (TIMED OUT)" if v.get("timed_out") else ""))
    idle = {n: v["idle"] for n, v in c.items() if "idle" in v}
    for n, acc in idle.items():
        print(f"idle ({n}): " + ", ".join(f"{k} {p}%" for k, p in acc["pct_core"].items()) + " of a core")
    print("\n=== ratios (target) ===")
    for k, v in res["ratios"].items():
        if isinstance(v, dict):
            t = f" (target {'<=' if 'cpu' in k else '>='} {v['target']}: {'met' if v['met'] else 'NOT met'})" if "target" in v else ""
            print(f"{k:<52}{v['value']:>8.3f}{t}")
        else:
            print(f"{k:<52}{v:>8}")
    if res["problems"]:
        print("\n=== problems ===")
        for p in res["problems"]:
            print(json.dumps(p, indent=2)[:6000])
    print(flush=True)


SEGMENTS = [  # (label, colour, which processes)
    ("job / plain loop (Python)", "#1f77b4", "job"),
    ("Prism binary", "#aec7e8", "prism"),
    ("broker (JVM)", "#ff7f0e", "broker"),
    ("redis-server", "#d62728", "redis"),
    ("standardizers", "#2ca02c", "std"),
    ("bench (lag probe, producer)", "#7f7f7f", "bench"),
]


def segments(name: str, v: dict) -> dict[str, float]:
    """CPU ms per update of one configuration split into the plot's segments."""
    per, by, out = v["ms_per_update"], v["by_command"], {k: 0.0 for _, _, k in SEGMENTS}
    n = v["updates"]
    for proc, ms in per.items():
        if proc == "bench":
            out["job" if name == "baseline" else "bench"] += ms
        elif proc in ("broker", "redis"):
            out[proc] += ms
        elif proc.startswith("std-"):
            out["std"] += ms
        else:  # a job instance: its Prism child apart
            prism = by.get(proc, {}).get("prism", 0.0) * 1000 / n
            out["prism"] += prism
            out["job"] += ms - prism
    return out


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c = {n: v for n, v in res["configs"].items() if "ms_per_update" in v}
    labels = {"baseline": "plain loop", "fnapi": "FnApiRunner", "prism": "Prism", "fnapi-x2": "FnApi x2",
              "prism-x2": "Prism x2"}
    bars = [(labels.get(n, n), segments(n, v), v["updates_per_s"]) for n, v in c.items()]
    if "steady" in res:
        bars.append((f"FnApi steady\n{res['steady']['rate']:g}/s", segments("steady", res["steady"]), None))
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(13, 5.2), gridspec_kw={"width_ratios": [3, 2]})
    x = np.arange(len(bars))
    bottom = np.zeros(len(bars))
    for label, colour, key in SEGMENTS:
        h = np.array([b[1][key] for b in bars])
        if h.sum() > 0:
            ax.bar(x, h, bottom=bottom, color=colour, label=label, width=0.65)
            bottom += h
    for i, (_, _, rate) in enumerate(bars):
        if rate:
            ax.text(i, bottom[i], f"{rate:.0f}/s", ha="center", va="bottom", fontsize=9)
    ax.set_xticks(x, [b[0] for b in bars], fontsize=9)
    ax.set_ylabel("CPU ms per entity update (all processes)")
    ax.set_title(f"Backlog of {res['backlog_updates']} updates ({res['broker']} broker): CPU per update by process;\n"
                 "label = updates/s to consume the backlog", fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    st = res.get("steady")
    back = res["standardize_backlog"]["per_standardizer"]
    xs = np.arange(len(PROCS))
    ax2.bar(xs - 0.2, [back[p]["ms_per_update"] for p in PROCS], width=0.4, label="backlog", color="#2ca02c")
    if st:
        ax2.bar(xs + 0.2, [st["ms_per_update"][f"std-{p}"] for p in PROCS], width=0.4,
                label=f"steady {st['rate']:g}/s", color="#98df8a")
    ax2.set_xticks(xs, PROCS)
    ax2.set_ylabel("CPU ms per entity update")
    ax2.set_ylim(0, ax2.get_ylim()[1] * 1.2)  # room for the legend
    ax2.set_title("Standardizers: CPU per update, backlog vs steady rate", fontsize=10)
    ax2.legend(fontsize=8, loc="upper left")
    fig.suptitle(f"nearline scale-out bench, {res['date']}, {res['machine']['cores']} shared cores", fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"plot: {path}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--entities", type=int, default=20000)
    ap.add_argument("--backlog", type=int, default=10000, help="entity updates in the backlog (bigger: e.g. 50000)")
    ap.add_argument("--rate", type=float, default=300.0, help="steady phase: updates/s")
    ap.add_argument("--seconds", type=float, default=30.0, help="steady phase: how long (0: no steady phase)")
    ap.add_argument("--steady-runner", choices=["fnapi", "prism"], default="fnapi")
    ap.add_argument("--idle-seconds", type=float, default=20.0, help="idle phase per runner (0: none)")
    ap.add_argument("--configs", default=",".join(CONFIGS),
                    help=f"comma-separated, in this order, from {','.join(CONFIGS)}")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds a configuration may take to catch up")
    ap.add_argument("--broker", choices=["kafka", "noida"], default="kafka")
    ap.add_argument("--out", help="also write the JSON result here")
    ap.add_argument("--plot", help="also draw the CPU-per-update bar plot here (PNG)")
    ap.add_argument("--keep-logs", help="copy every process's log (jobs, standardizers, broker, Redis) here")
    ap.add_argument("--replot", metavar="JSON", help="only draw --plot from a result file of an earlier run")
    args = ap.parse_args()
    if args.replot:
        plot(json.loads(Path(args.replot).read_text()), Path(args.plot or "scaleout-cpu-per-update.png"))
        return
    args.configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    bad = [c for c in args.configs if c not in CONFIGS]
    if bad:
        ap.error(f"unknown configs {bad}; choose from {list(CONFIGS)}")
    b = Bench(args)
    try:
        res = b.run()
        if args.out:
            Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
        if args.plot:
            plot(res, Path(args.plot))
    finally:
        b.close()


if __name__ == "__main__":
    main()
