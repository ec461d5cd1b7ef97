"""Deterministic synthetic job marketplace: members, jobs, noisy raw text and three interaction tasks.

Latent structure: every entity has an occupation (18 clusters in 7 industries, related occupations
share skills), a seniority level, a city, a company and a skill set. The true affinity of a
(member, job) pair is a fixed function of these latents plus per-entity idiosyncrasy; the
probabilities of a view, an apply (given a view, ~10% overall) and a recruiter InMail accept are
sigmoids of task-specific affine maps of it. The generator saves each interaction's true logit, so a
model's AUC can be compared with the best achievable (the true logit's AUC).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from nearline.marketplace.taxonomy import OCCUPATIONS, Taxonomies, build_taxonomies

ABBREV = {"senior": "sr.", "junior": "jr.", "engineer": "eng", "manager": "mgr", "developer": "dev",
          "representative": "rep", "analyst": "anlst", "director": "dir.", "technician": "tech"}


@dataclass
class MarketplaceSpec:
    """The default is the training size: 600k impressions, 213k apply rows (21k applies), 100k InMails, so
    that a 0.01 AUC difference is at least 3 seed-to-seed standard deviations on every task (docs/results.md,
    "Data size"); about 4 s to generate, 8.7 MB of parquet. PRESETS["demo"] is the small one the demo and the
    shipped v1 towers use."""

    members: int = 20_000
    jobs: int = 10_000
    impressions_per_member: int = 30
    """Jobs shown to each member (the view task's rows)."""
    inmails_per_job: int = 10
    """Recruiter InMails sent per job (the InMail-accept task's rows)."""
    companies: int = 0
    """0: scale with size (50 + entities/100, at most 20,000)."""
    seed: int = 7
    noise: float = 0.3
    """Probability of each kind of text noise (casing, abbreviation, typo, alias)."""

    def n_companies(self) -> int:
        return self.companies or min(20_000, 50 + (self.members + self.jobs) // 100)


# named sizes: `nearline marketplace generate --preset NAME`; fields not given keep the defaults above
PRESETS: dict[str, dict] = {
    "default": {},
    # the demo's stream, the standardizers' taxonomies in docker-compose / k8s, and the shipped v1 towers
    "demo": {"members": 2000, "jobs": 1000, "impressions_per_member": 20, "inmails_per_job": 4},
}


def preset(name: str, **overrides) -> MarketplaceSpec:
    """A MarketplaceSpec from a named preset, with the given fields (not None) replacing the preset's."""
    if name not in PRESETS:
        raise ValueError(f"unknown marketplace preset {name!r}; known: {sorted(PRESETS)}")
    return MarketplaceSpec(**{**PRESETS[name], **{k: v for k, v in overrides.items() if v is not None}})


class NoisyText:
    """Renders canonical values as raw text the way people type them."""

    def __init__(self, tax: Taxonomies, rng: np.random.Generator, noise: float):
        self.tax, self.rng, self.p = tax, rng, noise

    def _chance(self) -> bool:
        return self.rng.random() < self.p

    def typo(self, s: str) -> str:
        if len(s) < 5 or not self._chance() or self.rng.random() > 0.4:
            return s
        i = int(self.rng.integers(1, len(s) - 2))
        op = self.rng.integers(0, 3)
        if op == 0:  # swap adjacent
            return s[:i] + s[i + 1] + s[i] + s[i + 2:]
        if op == 1:  # drop
            return s[:i] + s[i + 1:]
        return s[:i] + s[i] + s[i:]  # double

    def case(self, s: str) -> str:
        r = self.rng.random()
        if r < self.p * 0.3:
            return s.upper()
        if r < self.p:
            return s.lower()
        return s.title()

    def abbreviate(self, s: str) -> str:
        if not self._chance():
            return s
        return " ".join(ABBREV.get(w, w) for w in s.split(" "))

    def pick(self, options: list[str]) -> str:
        # the canonical form most of the time, an alias otherwise
        if len(options) == 1 or not self._chance():
            return options[0]
        return options[int(self.rng.integers(0, len(options)))]

    def title(self, occ: int, sen: int) -> str:
        name = self.tax.titles[occ]
        base = self.pick(self.tax.aliases["titles"][name])
        prefix = self.pick(self.tax.aliases["seniority"][self.tax.seniority[sen]])
        text = f"{prefix} {base}".strip()
        return self.case(self.typo(self.abbreviate(text)))

    def skills(self, skill_ids: list[int]) -> str:
        sep = [", ", "; ", " | ", ","][int(self.rng.integers(0, 4))]
        out = []
        for s in skill_ids:
            name = self.tax.skills[s]
            out.append(self.typo(self.pick(self.tax.aliases["skills"][name])))
        return self.case(sep.join(out)) if self.rng.random() < self.p else sep.join(out)

    def company(self, cid: int) -> str:
        return self.case(self.typo(self.pick(self.tax.aliases["companies"][self.tax.companies[cid]])))

    def geo(self, gid: int) -> str:
        return self.case(self.pick(self.tax.aliases["geo"][self.tax.geo[gid]]))


class Marketplace:
    """Latent entity tables and the affinity function; the text and the logs are derived from them."""

    def __init__(self, spec: MarketplaceSpec):
        self.spec = spec
        self.rng = np.random.default_rng(spec.seed)
        self.tax = build_taxonomies(spec.n_companies(), self.rng)
        occs = list(OCCUPATIONS)
        n_occ = len(occs)
        # occupation similarity: 1 on the diagonal, skill-pool overlap elsewhere (+ same industry)
        pools = [set(OCCUPATIONS[o][2]) for o in occs]
        sim = np.zeros((n_occ + 1, n_occ + 1))
        for a in range(n_occ):
            for b in range(n_occ):
                jac = len(pools[a] & pools[b]) / len(pools[a] | pools[b])
                same_ind = OCCUPATIONS[occs[a]][0] == OCCUPATIONS[occs[b]][0]
                sim[a + 1, b + 1] = 1.0 if a == b else 0.8 * jac + 0.2 * same_ind
        self.occ_sim = sim
        self.skill_index = {s: i for i, s in enumerate(self.tax.skills)}
        self.pool_ids = [np.array([self.skill_index[s] for s in pools_[2]]) for pools_ in OCCUPATIONS.values()]
        self.comp_industry = np.array([0] + [1 + sorted(set(self.tax.company_industry[1:])).index(i)
                                             for i in self.tax.company_industry[1:]])
        self.members = self._entities(spec.members, "m")
        self.jobs = self._entities(spec.jobs, "j")

    def _entities(self, n: int, prefix: str) -> dict:
        rng, tax = self.rng, self.tax
        n_occ = len(OCCUPATIONS)
        occ_pop = rng.dirichlet(np.ones(n_occ) * 2.0)
        occ = rng.choice(n_occ, size=n, p=occ_pop) + 1
        sen = rng.choice(5, size=n, p=[0.2, 0.35, 0.25, 0.12, 0.08]) + 1
        geo_pop = rng.dirichlet(np.ones(tax.size("geo") - 1) * 1.5)
        geo = rng.choice(tax.size("geo") - 1, size=n, p=geo_pop) + 1
        # companies are Zipf-popular (high cardinality, long tail)
        nc = tax.size("companies") - 1
        cp = 1.0 / np.arange(1, nc + 1) ** 1.1
        company = rng.choice(nc, size=n, p=cp / cp.sum()) + 1
        n_sk = tax.size("skills")
        skills = np.zeros((n, n_sk), dtype=bool)
        for i in range(n):
            pool = self.pool_ids[occ[i] - 1]
            k = int(rng.integers(3, min(7, len(pool)) + 1))
            skills[i, rng.choice(pool, size=k, replace=False)] = True
            if rng.random() < 0.3:  # an off-cluster skill
                skills[i, rng.integers(1, n_sk)] = True
        bias = rng.normal(0, 0.5, size=n)  # idiosyncratic activity / attractiveness
        return {"id": np.array([f"{prefix}{i}" for i in range(n)]), "occ": occ, "sen": sen, "geo": geo,
                "company": company, "skills": skills, "bias": bias}

    # ---- affinity --------------------------------------------------------------------------------
    def affinity(self, mi: np.ndarray, ji: np.ndarray) -> np.ndarray:
        m, j = self.members, self.jobs
        occ = self.occ_sim[m["occ"][mi], j["occ"][ji]]
        inter = (m["skills"][mi] & j["skills"][ji]).sum(1)
        union = np.maximum((m["skills"][mi] | j["skills"][ji]).sum(1), 1)
        skill = inter / union
        geo = (m["geo"][mi] == j["geo"][ji]).astype(float)
        sen_gap = np.abs(m["sen"][mi] - j["sen"][ji])
        ind = (self.comp_industry[m["company"][mi]] == self.comp_industry[j["company"][ji]]).astype(float)
        return (2.5 * occ + 2.0 * skill + 0.9 * geo - 0.5 * sen_gap + 0.3 * ind
                + 0.5 * m["bias"][mi] + 0.5 * j["bias"][ji])

    def candidates(self, mi: np.ndarray, k: int) -> np.ndarray:
        """Jobs shown to members: half from a related occupation (as a recommender would), half random."""
        rng, jobs = self.rng, self.jobs
        n_jobs = len(jobs["id"])
        by_occ = [np.flatnonzero(jobs["occ"] == o) for o in range(len(self.occ_sim))]
        out = rng.integers(0, n_jobs, size=(len(mi), k))
        occ_m = self.members["occ"][mi]
        for row in range(len(mi)):
            pool = by_occ[occ_m[row]]
            if len(pool):
                h = k // 2
                out[row, :h] = rng.choice(pool, size=h)
        return out

    # ---- text -----------------------------------------------------------------------------------
    def raw_fields(self, kind: str, i: int, text: NoisyText) -> dict[str, str]:
        e = self.members if kind == "member" else self.jobs
        return {
            "title": text.title(int(e["occ"][i]), int(e["sen"][i])),
            "skills": text.skills([int(s) for s in np.flatnonzero(e["skills"][i])]),
            "company": text.company(int(e["company"][i])),
            "location": text.geo(int(e["geo"][i])),
        }


TASK_LOGITS = {
    # task -> (scale, shift): logit = scale * affinity - shift (+ task-specific terms below)
    "view": (0.9, 2.2),
    "apply": (1.4, 6.8),   # conditional on a view; ~10% of views overall
    "inmail": (0.6, 1.6),
}


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def generate(spec: MarketplaceSpec, out_dir: Path, *, progress: bool = True, fmt: str = "parquet") -> dict:
    """Write taxonomies.json, members/jobs tables and the view/apply/inmail logs; returns a summary."""
    out_dir.mkdir(parents=True, exist_ok=True)
    mp = Marketplace(spec)
    text = NoisyText(mp.tax, mp.rng, spec.noise)
    mp.tax.save(out_dir / "taxonomies.json")
    summary: dict = {"spec": asdict(spec)}

    for kind, ents in (("member", mp.members), ("job", mp.jobs)):
        n = len(ents["id"])
        rows = {"entity_id": ents["id"].tolist(), "title": [], "skills": [], "company": [], "location": [],
                "occupation": ents["occ"], "seniority": ents["sen"], "geo_id": ents["geo"],
                "company_id": ents["company"]}
        for i in tqdm(range(n), desc=f"{kind}s", disable=not progress, unit="ent", mininterval=0.5):
            for k, v in mp.raw_fields(kind, i, text).items():
                rows[k].append(v)
        rows["skill_ids"] = [np.flatnonzero(r).tolist() for r in ents["skills"]]
        _write(pa.table(rows), out_dir / f"{kind}s", fmt)
        summary[f"{kind}s"] = n

    # interactions, in chunks of members so millions fit in memory
    k = spec.impressions_per_member
    chunk = 20_000
    views, applies = [], []
    n_m = spec.members
    with tqdm(total=n_m, desc="interactions", disable=not progress, unit="member", mininterval=0.5) as bar:
        for start in range(0, n_m, chunk):
            mi = np.arange(start, min(n_m, start + chunk))
            cand = mp.candidates(mi, k)
            mrep = np.repeat(mi, k)
            jflat = cand.reshape(-1)
            aff = mp.affinity(mrep, jflat)
            s, b = TASK_LOGITS["view"]
            v_logit = s * aff - b
            viewed = mp.rng.random(len(aff)) < sigmoid(v_logit)
            views.append((mrep, jflat, viewed, v_logit))
            s, b = TASK_LOGITS["apply"]
            a_logit = s * aff - b
            applied = viewed & (mp.rng.random(len(aff)) < sigmoid(a_logit))
            # the apply task trains on views only (a filtered view of the view task's data)
            applies.append((mrep[viewed], jflat[viewed], applied[viewed], a_logit[viewed]))
            bar.update(len(mi))
    _write_log(views, mp, out_dir / "view", fmt)
    _write_log(applies, mp, out_dir / "apply", fmt)

    # recruiter InMails: recruiters message members of related occupations; accept depends on the
    # affinity plus a seniority step-up bonus (members accept jobs one level above their own)
    n_j = spec.jobs
    ji = np.repeat(np.arange(n_j), spec.inmails_per_job)
    by_occ = [np.flatnonzero(mp.members["occ"] == o) for o in range(len(mp.occ_sim))]
    mi = mp.rng.integers(0, n_m, size=len(ji))
    for r in range(len(ji)):
        pool = by_occ[mp.jobs["occ"][ji[r]]]
        if len(pool) and mp.rng.random() < 0.7:
            mi[r] = pool[mp.rng.integers(0, len(pool))]
    aff = mp.affinity(mi, ji)
    step = (mp.jobs["sen"][ji] - mp.members["sen"][mi] == 1).astype(float)
    s, b = TASK_LOGITS["inmail"]
    i_logit = s * aff + 0.8 * step - b
    accepted = mp.rng.random(len(aff)) < sigmoid(i_logit)
    _write_log([(mi, ji, accepted, i_logit)], mp, out_dir / "inmail", fmt)

    n_views = sum(len(v[0]) for v in views)
    summary.update(
        views=int(n_views), view_rate=float(sum(v[2].sum() for v in views) / max(n_views, 1)),
        apply_rows=int(sum(len(a[0]) for a in applies)),
        apply_rate_of_impressions=float(sum(a[2].sum() for a in applies) / max(n_views, 1)),
        apply_rate_of_views=float(sum(a[2].sum() for a in applies) / max(sum(v[2].sum() for v in views), 1)),
        inmails=int(len(ji)), inmail_accept_rate=float(accepted.mean()) if len(ji) else math.nan,
    )
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _write_log(parts, mp: Marketplace, path: Path, fmt: str) -> None:
    mi = np.concatenate([p[0] for p in parts])
    ji = np.concatenate([p[1] for p in parts])
    table = pa.table({
        "member_id": mp.members["id"][mi], "job_id": mp.jobs["id"][ji],
        "label": np.concatenate([p[2] for p in parts]).astype(np.int8),
        "true_logit": np.concatenate([p[3] for p in parts]).astype(np.float32),
    })
    _write(table, path, fmt)


def _write(table: pa.Table, path_stem: Path, fmt: str) -> None:
    if fmt == "parquet":
        pq.write_table(table, path_stem.with_suffix(".parquet"))
    elif fmt == "avro":
        import fastavro

        schema = {"type": "record", "name": path_stem.name.title().replace("_", ""), "fields": [
            {"name": f.name, "type": _avro_type(f.type)} for f in table.schema]}
        with open(path_stem.with_suffix(".avro"), "wb") as fh:
            fastavro.writer(fh, fastavro.parse_schema(schema), table.to_pylist())
    else:
        raise ValueError(f"unknown format {fmt!r} (parquet or avro)")


def _avro_type(t: pa.DataType):
    if pa.types.is_string(t):
        return "string"
    if pa.types.is_integer(t):
        return "long"
    if pa.types.is_floating(t):
        return "double" if t.bit_width == 64 else "float"
    if pa.types.is_list(t):
        return {"type": "array", "items": _avro_type(t.value_type)}
    raise TypeError(f"no Avro type for {t}")


def read_table(data_dir: Path, name: str) -> pa.Table:
    p = data_dir / f"{name}.parquet"
    if p.exists():
        return pq.read_table(p)
    import fastavro

    with open(data_dir / f"{name}.avro", "rb") as fh:
        return pa.Table.from_pylist(list(fastavro.reader(fh)))
