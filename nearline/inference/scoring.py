"""ModelSet: every registered tower, loaded in onnxruntime, scored in batches; reloads the registry live.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass

import numpy as np

from nearline.registry.features import FeatureColumns, FeatureEncoder, build_feed
from nearline.registry.manifest import ModelPackage
from nearline.registry.packages import Registry, required_standardizers

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


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


class ModelSet:
    """Every registered model, loaded. A model that fails at run time never stops the job: the rows it
    fails on are reported (dead-lettered by the caller, reason ``model_failed``), and a model that
    fails on every row of ``disable_after`` batches in a row is disabled with an error log (ALERT) and
    the ``models_disabled`` counter until its package changes. Every embedding is checked finite;
    rows with NaN/inf are reported (reason ``non_finite_embedding``), never returned as results."""

    def __init__(self, watcher: RegistryWatcher, ort_threads: int = 1, disable_after: int = 3, metrics=None):
        self.watcher, self.ort_threads, self.disable_after = watcher, ort_threads, disable_after
        if metrics is None:
            from nearline.core.metrics import METRICS as metrics
        self.metrics = metrics
        self.models: dict[str, LoadedModel] = {}
        self.failing: dict[str, int] = {}       # model key -> consecutive batches it failed on every row
        self.disabled: dict[str, str] = {}      # model key -> sha256 of the package that was disabled
        self.refresh(force=True)

    def _load(self, pkg: ModelPackage) -> LoadedModel:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = self.ort_threads  # one thread per session beats two on small machines
        so.inter_op_num_threads = 1
        # FATAL only: an error is raised as a Python exception, which we report in one line; at ERROR
        # onnxruntime also prints its own raw (coloured) line to stderr first
        so.log_severity_level = 4
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
        # a disabled model serves again once its package changed (a fixed package is a new sha256)
        self.disabled = {k: sha for k, sha in self.disabled.items() if k in fresh and fresh[k].package.manifest.sha256 == sha}
        log.info("now scoring with %s%s", sorted(self.models), f" (disabled: {sorted(self.disabled)})" if self.disabled else "")
        return True

    def for_type(self, entity_type: str) -> list[LoadedModel]:
        return [m for m in self.models.values() if m.package.manifest.entity_type == entity_type
                and m.key not in self.disabled]

    def _run(self, m: LoadedModel, rows_idx: list[int], feed, bad: dict[int, str]):
        """The model's embeddings of rows_idx ([len(rows_idx), dim]; failures recorded in ``bad``, and
        their rows left NaN). ``feed`` holds exactly the rows rows_idx, in that order."""
        man = m.package.manifest
        try:
            res = run_rows(m.session, man.output_name, feed)
            self.failing.pop(m.key, None)
            return res
        except Exception as exc:  # onnxruntime errors: find the rows that cause it, run the others
            batch_error = exc
        res = np.full((len(rows_idx), man.output_dim), np.nan, dtype=np.float32)
        ran = 0
        for local, i in enumerate(rows_idx):
            try:
                res[local] = run_rows(m.session, man.output_name, {k: v[local:local + 1] for k, v in feed.items()})[0]
                ran += 1
            except Exception as exc:
                bad[i] = f"model_failed: {man.key} failed when run: {_first_line(exc)}"
        if ran:
            self.failing.pop(m.key, None)
        elif rows_idx:
            self.failing[m.key] = self.failing.get(m.key, 0) + 1
            if self.failing[m.key] >= self.disable_after:
                self.disabled[m.key] = man.sha256
                self.metrics.inc("models_disabled")
                log.error("ALERT: model %s DISABLED: it failed on every row of %d batches in a row (%s); the other "
                          "models keep serving; it serves again when its package changes", m.key, self.failing[m.key],
                          _first_line(batch_error))
        return res

    def score(self, entity_type: str, feature_rows: list[dict]) -> tuple[dict[str, np.ndarray], dict[int, str]]:
        """Score rows (feature name -> {'ids', 'weights'} dicts) with every model of the type: see
        :meth:`score_columns`."""
        return self.score_columns(entity_type, FeatureColumns.from_rows(feature_rows))

    def _models_for(self, entity_type: str, keys: list[str] | None) -> list[LoadedModel]:
        if keys is None:
            return self.for_type(entity_type)
        missing = [k for k in keys if k not in self.models]
        if missing:
            raise KeyError(f"models {missing} are not loaded (loaded: {sorted(self.models)})")
        return [self.models[k] for k in keys
                if self.models[k].package.manifest.entity_type == entity_type and k not in self.disabled]

    def score_columns(self, entity_type: str, cols: FeatureColumns,
                      keys: list[str] | None = None) -> tuple[dict[str, np.ndarray], dict[int, str]]:
        """Score a columnar batch with every model of the type (``keys``: only these model keys, in that
        order). Returns ({model key: [n, dim] float32}, {row: error}); a row in the error map is left NaN by
        the models after the one that failed it (they do not run it).

        One tensor build per tower (versions with the same inputs share it) and one ORT call per model
        for the whole batch; a row whose features do not fit a manifest is isolated (reported in the
        error map) without failing the others.
        """
        out: dict[str, np.ndarray] = {}
        bad: dict[int, str] = {}
        built: dict[str, tuple] = {}  # versions of one tower share their inputs: build the tensors once
        for m in self._models_for(entity_type, keys):
            man = m.package.manifest
            shared = repr(man.inputs)
            got = built.get(shared)
            if got is None:
                got = built[shared] = build_feed(man, cols, m.encoders)
            feed, errors = got
            for i, exc in errors.items():
                if i not in bad:
                    bad[i] = f"features_do_not_fit: features do not fit {man.key}: {exc}"
            if bad:
                keep = np.ones(cols.n, dtype=bool)
                keep[list(bad)] = False
                rows = np.flatnonzero(keep)
                feed = {k: v[rows] for k, v in feed.items()}
                rows_idx = rows.tolist()
            else:
                rows_idx = list(range(cols.n))
            full = np.full((cols.n, man.output_dim), np.nan, dtype=np.float32)
            if rows_idx:
                res = self._run(m, rows_idx, feed, bad)
                full[rows_idx] = res
                finite = np.isfinite(res).all(axis=1)
                if not finite.all():
                    for local in np.flatnonzero(~finite):
                        i = rows_idx[local]
                        if i not in bad:
                            n = int(np.sum(~np.isfinite(res[local])))
                            bad[i] = f"non_finite_embedding: {man.key} produced NaN/inf ({n} of {res.shape[1]} values)"
            out[m.key] = full
        return out, bad
