"""ModelSet: every registered tower, loaded in onnxruntime, scored in batches; reloads the registry live."""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nearline.features import FeatureEncoder, FeatureShapeError, build_inputs
from nearline.registry import ModelPackage, Registry, required_standardizers

log = logging.getLogger(__name__)


def run_rows(session, output_name: str, feed: dict[str, np.ndarray]) -> np.ndarray:
    """Run a batch, never a batch of one: onnxruntime computes a single row on a GEMV path whose result
    differs in the last bits (measured: 4.8e-7) from the same row inside any batch of 2 or more (bitwise
    identical for every size 2..1500 at any offset). Bitwise dedupe needs an entity's embedding not to
    depend on which other entities happened to share its batch, so a lone row is scored twice."""
    n = next(iter(feed.values())).shape[0]
    if n == 1:
        doubled = {k: np.concatenate([v, v]) for k, v in feed.items()}
        return session.run([output_name], doubled)[0][:1]
    return session.run([output_name], feed)[0]


class RegistryWatcher:
    """Re-reads the registry when it (or a registered manifest/ONNX file) changes, at most every poll_s.

    A broken package is refused with one clear log line (repeated only if the package changes); the
    packages that were valid keep serving.
    """

    def __init__(self, registry: Registry, entity_types: list[str], poll_s: float = 2.0):
        self.registry, self.entity_types, self.poll_s = registry, entity_types, poll_s
        self._fingerprint: str | None = None
        self._next_check = 0.0
        self.packages: list[ModelPackage] = []
        self.refused: dict[str, list[str]] = {}

    def _stamp(self) -> str:
        h = hashlib.sha1()
        try:
            h.update(self.registry.path.read_bytes())
            for e in self.registry.entries():
                d = self.registry.resolve(e)
                for f in ("manifest.json", "tower.onnx"):
                    p = d / f
                    h.update(f"{p}:{p.stat().st_mtime_ns if p.exists() else -1}".encode())
        except Exception as exc:  # an unreadable registry is reported by load(); never crash the job
            h.update(repr(exc).encode())
        return h.hexdigest()

    def poll(self, force: bool = False) -> bool:
        """True if the set of valid packages changed."""
        now = time.monotonic()
        if not force and now < self._next_check:
            return False
        self._next_check = now + self.poll_s
        stamp = self._stamp()
        if stamp == self._fingerprint:
            return False
        self._fingerprint = stamp
        try:
            good, bad = self.registry.load(self.entity_types)
        except Exception as exc:
            log.error("registry %s unreadable, keeping the %d loaded models: %s", self.registry.path, len(self.packages), exc)
            return False
        for entry, problems in bad.items():
            if self.refused.get(entry) != problems:
                log.error("model package %s REFUSED, the registered ones keep serving: %s", entry, "; ".join(problems))
        self.refused = bad
        old = {p.manifest.key for p in self.packages}
        # keep serving a previously valid version whose package just broke (e.g. a half-copied file)
        keep = [p for p in self.packages if p.manifest.key not in {g.manifest.key for g in good}
                and any(self.registry.resolve(e).resolve() == p.path.resolve() for e in bad)]
        self.packages = good + keep
        new = {p.manifest.key for p in self.packages}
        if new != old:
            log.info("registered models now: %s (added %s, removed %s)", sorted(new), sorted(new - old), sorted(old - new))
            return True
        return False

    def required(self) -> dict[str, set[str]]:
        return required_standardizers(self.packages)


@dataclass
class LoadedModel:
    package: ModelPackage
    session: object
    encoders: dict[str, FeatureEncoder]

    @property
    def key(self) -> str:
        return self.package.manifest.key


class ModelSet:
    def __init__(self, watcher: RegistryWatcher, ort_threads: int = 1):
        self.watcher, self.ort_threads = watcher, ort_threads
        self.models: dict[str, LoadedModel] = {}
        self.refresh(force=True)

    def _load(self, pkg: ModelPackage) -> LoadedModel:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = self.ort_threads  # one thread per session beats two on small machines
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        sess = ort.InferenceSession(str(pkg.onnx_path), so, providers=["CPUExecutionProvider"])
        return LoadedModel(pkg, sess, {f.name: FeatureEncoder(f) for f in pkg.manifest.inputs})

    def refresh(self, force: bool = False) -> bool:
        if not self.watcher.poll(force):
            return False
        fresh = {}
        for pkg in self.watcher.packages:
            k = pkg.manifest.key
            cur = self.models.get(k)
            fresh[k] = cur if cur and cur.package.manifest.sha256 == pkg.manifest.sha256 else self._load(pkg)
        self.models = fresh
        log.info("now scoring with %s", sorted(self.models))
        return True

    def for_type(self, entity_type: str) -> list[LoadedModel]:
        return [m for m in self.models.values() if m.package.manifest.entity_type == entity_type]

    def score(self, entity_type: str, feature_rows: list[dict]) -> tuple[dict[str, np.ndarray], dict[int, str]]:
        """Score rows with every model of the type. Returns ({model key: [n, dim] float32}, {row: error}).

        One ORT call per model for the whole batch; a row whose features do not fit a manifest is
        isolated (reported in the error map) without failing the others.
        """
        out: dict[str, np.ndarray] = {}
        bad: dict[int, str] = {}
        for m in self.for_type(entity_type):
            man = m.package.manifest
            rows_idx = [i for i in range(len(feature_rows)) if i not in bad]
            try:
                feed = build_inputs(man, [feature_rows[i] for i in rows_idx], m.encoders)
            except FeatureShapeError:
                keep = []
                for i in rows_idx:
                    try:
                        build_inputs(man, [feature_rows[i]], m.encoders)
                        keep.append(i)
                    except FeatureShapeError as exc:
                        bad[i] = f"features do not fit {man.key}: {exc}"
                rows_idx = keep
                feed = build_inputs(man, [feature_rows[i] for i in rows_idx], m.encoders) if rows_idx else None
            full = np.full((len(feature_rows), man.output_dim), np.nan, dtype=np.float32)
            if feed is not None:
                full[rows_idx] = run_rows(m.session, man.output_name, feed)
            out[m.key] = full
        return out, bad
