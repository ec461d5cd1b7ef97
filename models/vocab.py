"""High-cardinality vocabularies: keep the values that carry the interactions, map the rest to OOV.

For a member feature and the matching job feature (company, geo), build the weighted bipartite
co-occurrence graph: an edge (a, b) weighs the number of interactions between a member with value a and
a job with value b. Keeping at most n values per side should keep as much interaction weight as possible
inside the kept set. We use Charikar's greedy peeling (the 2-approximation of the densest subgraph),
constrained to the budget: repeatedly drop, from a side still over budget, the value with the smallest
weighted degree into the values still kept, until both sides fit.
"""

from __future__ import annotations

import heapq
from collections import defaultdict
from dataclasses import dataclass

import numpy as np


@dataclass
class Subset:
    member_ids: list[int]
    job_ids: list[int]
    covered: float
    """Share of the interaction weight whose two endpoints are both kept."""


def cooccurrence(member_values: np.ndarray, job_values: np.ndarray, weights: np.ndarray | None = None) -> dict:
    w = np.ones(len(member_values)) if weights is None else np.asarray(weights, dtype=float)
    edges: dict[tuple[int, int], float] = defaultdict(float)
    for a, b, x in zip(member_values.tolist(), job_values.tolist(), w.tolist()):
        edges[(a, b)] += x
    return edges


def greedy_densest_subset(edges: dict[tuple[int, int], float], n_member: int, n_job: int) -> Subset:
    adj: dict[tuple[str, int], dict[tuple[str, int], float]] = defaultdict(dict)
    total = 0.0
    for (a, b), w in edges.items():
        adj[("m", a)][("j", b)] = w
        adj[("j", b)][("m", a)] = w
        total += w
    deg = {v: sum(nb.values()) for v, nb in adj.items()}
    alive = set(adj)
    budget = {"m": n_member, "j": n_job}
    count = {"m": sum(1 for v in alive if v[0] == "m"), "j": sum(1 for v in alive if v[0] == "j")}
    heaps = {s: [(deg[v], v) for v in alive if v[0] == s] for s in "mj"}
    for h in heaps.values():
        heapq.heapify(h)
    kept_weight = total
    while count["m"] > budget["m"] or count["j"] > budget["j"]:
        # peel from the side that is over budget; if both are, the globally weakest value
        sides = [s for s in "mj" if count[s] > budget[s]]
        best = None
        for s in sides:
            h = heaps[s]
            while h and (h[0][1] not in alive or h[0][0] != deg[h[0][1]]):
                heapq.heappop(h)  # stale entry
            if h and (best is None or h[0][0] < best[0]):
                best = h[0]
        if best is None:
            break
        d, v = heapq.heappop(heaps[best[1][0]])
        alive.discard(v)
        count[v[0]] -= 1
        kept_weight -= d
        for u, w in adj[v].items():
            if u in alive:
                deg[u] -= w
                heapq.heappush(heaps[u[0]], (deg[u], u))
    members = sorted(v[1] for v in alive if v[0] == "m")
    jobs = sorted(v[1] for v in alive if v[0] == "j")
    return Subset(members, jobs, kept_weight / total if total else 0.0)


def coverage_curve(edges, ns: list[int]) -> list[tuple[int, float]]:
    return [(n, greedy_densest_subset(edges, n, n).covered) for n in ns]


def top_k_coverage(edges, n: int) -> float:
    """Baseline: the n most frequent values per side, by weighted degree."""
    dm, dj = defaultdict(float), defaultdict(float)
    total = 0.0
    for (a, b), w in edges.items():
        dm[a] += w
        dj[b] += w
        total += w
    km = set(sorted(dm, key=dm.get, reverse=True)[:n])
    kj = set(sorted(dj, key=dj.get, reverse=True)[:n])
    return sum(w for (a, b), w in edges.items() if a in km and b in kj) / total if total else 0.0
