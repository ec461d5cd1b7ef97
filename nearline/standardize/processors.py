"""Feature-standardization processors: raw text -> taxonomy ids.

Each processor is a small class with one pure method, ``standardize(fields) -> features``, built from
the taxonomies the marketplace generator writes. :func:`run_processor` runs one of them as its own
process and consumer group: read EntityUpdate, write StandardizedFeatures to the processor's topic keyed
by entity, keep the update version, dead-letter what cannot be parsed, and commit input offsets only
after the output (and any dead letter) is acknowledged by the broker.
"""

from __future__ import annotations

import difflib
import re
from functools import lru_cache

from nearline.config import Config
from nearline.marketplace.generate import ABBREV
from nearline.marketplace.taxonomy import Taxonomies

UNKNOWN = 0
_PUNCT = re.compile(r"[^\w&+#/ ]+")
_SPACES = re.compile(r"\s+")
_EXPAND = {v.rstrip("."): k for k, v in ABBREV.items()}
_EXPAND.update({"snr": "senior", "sr": "senior", "jr": "junior", "sw": "software"})


class StandardizationError(ValueError):
    """The input cannot be standardized at all (not merely an unknown value): it is dead-lettered."""


def normalize(text: str) -> str:
    text = _PUNCT.sub(" ", text.lower().replace(".", " "))
    words = [_EXPAND.get(w, w) for w in _SPACES.split(text.strip()) if w]
    return " ".join(words)


class AliasMatcher:
    """Exact lookup of normalised aliases, then a fuzzy match (typos) above a similarity cutoff."""

    def __init__(self, canon: list[str], aliases: dict[str, list[str]], cutoff: float = 0.84):
        self.table: dict[str, int] = {}
        for tid, name in enumerate(canon):
            if tid == UNKNOWN:
                continue
            for alias in [name] + aliases.get(name, []):
                key = normalize(alias)
                if key:
                    self.table.setdefault(key, tid)
        self.keys = list(self.table)
        self.cutoff = cutoff
        self._cached = lru_cache(maxsize=200_000)(self._match)

    # Only short texts are cached: the cache is bounded in entries, and capping the key length bounds
    # its memory too (200,000 x 256 characters), so a flood of long distinct texts cannot grow it.
    CACHE_MAX_CHARS = 256

    def match(self, text: str) -> int:
        return self._cached(text) if len(text) <= self.CACHE_MAX_CHARS else self._match(text)

    def _match(self, text: str) -> int:
        key = normalize(text)
        if not key:
            return UNKNOWN
        if key in self.table:
            return self.table[key]
        close = difflib.get_close_matches(key, self.keys, n=1, cutoff=self.cutoff)
        return self.table[close[0]] if close else UNKNOWN


class Processor:
    name: str = ""
    fields: tuple[str, ...] = ()
    features: tuple[str, ...] = ()

    def __init__(self, tax: Taxonomies):
        self.tax = tax

    def standardize(self, fields: dict[str, str]) -> dict[str, dict]:
        raise NotImplementedError

    def _require(self, fields: dict[str, str]) -> list[str]:
        missing = [f for f in self.fields if f not in fields]
        if missing:
            raise StandardizationError(f"{self.name}: raw field(s) {missing} missing from the update")
        return [fields[f] for f in self.fields]


def _one(tid: int) -> dict:
    return {"ids": [int(tid)], "weights": None}


class TitleProcessor(Processor):
    """Title text -> occupation title id and seniority id (the seniority words are stripped first)."""

    name, fields, features = "title", ("title",), ("title", "seniority")

    def __init__(self, tax: Taxonomies):
        super().__init__(tax)
        self.titles = AliasMatcher(tax.titles, tax.aliases["titles"])
        sen = []
        for level, aliases in tax.aliases["seniority"].items():
            for a in aliases:
                if a:
                    sen.append((normalize(a), tax.seniority.index(level)))
        self.seniority_prefixes = sorted(sen, key=lambda x: -len(x[0]))  # longest prefix first
        self.mid = tax.seniority.index("mid")

    def standardize(self, fields):
        (raw,) = self._require(fields)
        text = normalize(raw)
        sen = self.mid
        for prefix, sid in self.seniority_prefixes:
            # strip a seniority prefix only when what remains is still a known title
            if text.startswith(prefix + " ") and self.titles.match(text[len(prefix) + 1:]) != UNKNOWN:
                sen, text = sid, text[len(prefix) + 1:]
                break
        return {"title": _one(self.titles.match(text)), "seniority": _one(sen)}


class SkillsProcessor(Processor):
    """Delimited skill list -> skill ids (deduplicated, order kept), weight 1 per recognised skill."""

    name, fields, features = "skills", ("skills",), ("skills",)
    _SPLIT = re.compile(r"[,;|\n]+")

    def __init__(self, tax: Taxonomies):
        super().__init__(tax)
        self.skills = AliasMatcher(tax.skills, tax.aliases["skills"], cutoff=0.8)

    def standardize(self, fields):
        (raw,) = self._require(fields)
        ids: list[int] = []
        for part in self._SPLIT.split(raw):
            if part.strip():
                sid = self.skills.match(part)
                if sid != UNKNOWN and sid not in ids:
                    ids.append(sid)
        return {"skills": {"ids": ids or [UNKNOWN], "weights": [1.0] * len(ids) if ids else [0.0]}}


class CompanyProcessor(Processor):
    name, fields, features = "company", ("company",), ("company",)
    _SUFFIX = re.compile(r"\b(inc|llc|corp|corporation|co|ltd|group|technologies)\b")

    def __init__(self, tax: Taxonomies):
        super().__init__(tax)
        self.companies = AliasMatcher(tax.companies, {c: [] for c in tax.companies}, cutoff=0.85)

    def standardize(self, fields):
        (raw,) = self._require(fields)
        text = _SPACES.sub(" ", self._SUFFIX.sub(" ", normalize(raw))).strip()
        return {"company": _one(self.companies.match(text))}


class GeoProcessor(Processor):
    name, fields, features = "geo", ("location",), ("geo",)

    def __init__(self, tax: Taxonomies):
        super().__init__(tax)
        self.geo = AliasMatcher(tax.geo, tax.aliases["geo"])

    def standardize(self, fields):
        (raw,) = self._require(fields)
        return {"geo": _one(self.geo.match(raw))}


PROCESSORS: dict[str, type[Processor]] = {p.name: p for p in (TitleProcessor, SkillsProcessor, CompanyProcessor, GeoProcessor)}
FEATURE_TO_PROCESSOR = {f: p.name for p in PROCESSORS.values() for f in p.features}


def make_processor(name: str, tax: Taxonomies) -> Processor:
    try:
        return PROCESSORS[name](tax)
    except KeyError:
        raise ValueError(f"unknown processor {name!r}; known: {sorted(PROCESSORS)}") from None


def load_taxonomies(cfg: Config) -> Taxonomies:
    path = cfg.path(cfg.standardizers.taxonomy_dir) / "taxonomies.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run `nearline marketplace generate` first")
    return Taxonomies.load(path)
