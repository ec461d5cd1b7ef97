"""CPU seconds of process trees from /proc (Linux; no psutil), for the benches.

    from bench.cpu import Trees
    trees = Trees({"job": job_pid, "broker": kafka_pid})
    before = trees.sample()
    ...
    used = trees.since(before)   # {"job": 3.2, "broker": 1.1}, CPU seconds, children included

A tree is a process and every descendant alive at sampling time, each counted with utime + stime (all its
threads) + cutime + cstime (children it has already reaped), so a child that ends between two samples is
still counted once: in its own figure while alive, in its parent's after it was reaped. The breakdown by
command name (`comm`, e.g. "python", "prism", "java") of the last sample is kept for reports.
"""

from __future__ import annotations

import os
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int, children: bool = True) -> tuple[str, int, float] | None:
    """(comm, ppid, CPU seconds incl. reaped children unless ``children`` is False) of one process, None if
    it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm may hold spaces and parentheses: it ends at the last ')'
    lpar, rpar = raw.index("("), raw.rindex(")")
    comm = raw[lpar + 1:rpar]
    f = raw[rpar + 2:].split()  # f[0] is field 3 (state)
    ppid = int(f[1])
    utime, stime, cutime, cstime = (int(x) for x in f[11:15])
    return comm, ppid, (utime + stime + (cutime + cstime if children else 0)) / TICK


def processes() -> dict[int, tuple[str, int, float]]:
    out = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            s = _stat(int(d))
            if s is not None:
                out[int(d)] = s
    return out


def descendants(root: int, procs: dict[int, tuple[str, int, float]]) -> list[int]:
    kids: dict[int, list[int]] = {}
    for pid, (_, ppid, _) in procs.items():
        kids.setdefault(ppid, []).append(pid)
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        if p in procs:
            out.append(p)
            todo.extend(kids.get(p, []))
    return out


def machine_busy_s() -> tuple[float, float]:
    """(busy CPU seconds, total CPU seconds) of the whole machine since boot, all cores (/proc/stat)."""
    f = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = f[3] + (f[4] if len(f) > 4 else 0)  # idle + iowait
    total = sum(f[:8])  # user nice system idle iowait irq softirq steal (guest is inside user)
    return (total - idle) / TICK, total / TICK


class Sample:
    def __init__(self, trees: dict[str, float], comms: dict[str, dict[str, float]], pids: dict[str, list[int]],
                 machine: tuple[float, float]):
        self.trees, self.comms, self.pids, self.machine = trees, comms, pids, machine


class Trees:
    """Named process trees, sampled together. A name added with ``alone=True`` is that one process only
    (its own threads, not its children nor what it reaped: e.g. the bench itself, whose children are the
    services and jobs measured apart)."""

    def __init__(self, roots: dict[str, int] | None = None):
        self.roots: dict[str, int] = dict(roots or {})
        self.alone: set[str] = set()
        self.seen: dict[str, set[int]] = {}  # every pid ever seen in each tree (to clean up leftovers)

    def add(self, name: str, pid: int, alone: bool = False) -> None:
        self.roots[name] = pid
        if alone:
            self.alone.add(name)

    def remove(self, name: str) -> None:
        self.roots.pop(name, None)
        self.alone.discard(name)

    def sample(self) -> Sample:
        procs = processes()
        trees, comms, pids = {}, {}, {}
        for name, root in self.roots.items():
            if name in self.alone:
                me = _stat(root, children=False)
                if me is None:
                    continue
                procs_alone = {root: me}
                members = [root]
            else:
                procs_alone = procs
                members = descendants(root, procs)
            pids[name] = members
            self.seen.setdefault(name, set()).update(members)
            trees[name] = sum(procs_alone[p][2] for p in members)
            by = {}
            for p in members:
                by[procs_alone[p][0]] = by.get(procs_alone[p][0], 0.0) + procs_alone[p][2]
            comms[name] = by
        return Sample(trees, comms, pids, machine_busy_s())

    @staticmethod
    def delta(before: Sample, after: Sample) -> dict[str, float]:
        """CPU seconds of each tree between two samples (a tree missing from either: not reported)."""
        return {n: max(0.0, after.trees[n] - before.trees[n]) for n in after.trees if n in before.trees}

    @staticmethod
    def delta_by_comm(before: Sample, after: Sample) -> dict[str, dict[str, float]]:
        """Per tree, CPU seconds by command name (a process that appeared in between counts from zero)."""
        out = {}
        for n, by in after.comms.items():
            if n not in before.comms:
                continue
            out[n] = {c: max(0.0, v - before.comms[n].get(c, 0.0)) for c, v in by.items()}
        return out

    @staticmethod
    def machine_delta(before: Sample, after: Sample) -> tuple[float, float]:
        """(busy CPU seconds, wall CPU seconds available) of the machine between two samples."""
        return after.machine[0] - before.machine[0], after.machine[1] - before.machine[1]
