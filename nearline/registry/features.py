"""Standardized features -> the exact tensors a model's manifest describes. Pure numpy, no I/O.

Two steps, shared by the nearline job and the backfill:

* :class:`FeatureColumns` holds a batch of entities' features column by column, in the Arrow list layout
  (per feature: one flat int64 id array, offsets [n+1], weights aligned with the ids), with the reason a
  row does not fit a manifest recorded per row instead of raised. The job builds it from its dict rows
  (:meth:`FeatureColumns.from_rows`); the backfill decodes snapshot records straight into it
  (nearline/offline/snapshot_columns.py), without a Python object per id.
* :func:`build_feed` turns it into a manifest's ONNX feed with whole-array numpy operations (no Python
  loop per row): truncation to max_len, padding, vocabulary clipping to OOV, kept-id maps, defaults.

The tensors are bitwise those of the former per-row builder (tests/unit/test_features_columns.py keeps it
as the reference and compares on fuzzed batches).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import chain

import numpy as np

from nearline.registry.manifest import InputFeature, Manifest

INT64_MAX = int(np.iinfo(np.int64).max)
NO_ERROR = INT64_MAX
"""``FeatureColumn.error_at`` of a row without error."""
_INT_TYPES = (int, np.integer)
_NUMBER_TYPES = (int, float, np.floating, np.integer)


class FeatureShapeError(ValueError):
    """Features that do not fit the manifest (wrong types, mismatched weights): dead-lettered."""


class FeatureEncoder:
    """Maps taxonomy ids to embedding rows of one input feature (vocab clipping to OOV, kept-id maps)."""

    def __init__(self, f: InputFeature):
        self.f = f
        self.lookup = None
        self._kept_sorted = self._kept_rows = None
        if f.kept_ids is not None:
            self.lookup = {int(t): i + 2 for i, t in enumerate(f.kept_ids)}
            # the dict above as sorted arrays for np.searchsorted (a repeated kept id maps where the dict does:
            # its last position)
            keys = np.fromiter(self.lookup.keys(), dtype=np.int64, count=len(self.lookup))
            rows = np.fromiter(self.lookup.values(), dtype=np.int64, count=len(self.lookup))
            order = np.argsort(keys, kind="stable")
            self._kept_sorted, self._kept_rows = keys[order], rows[order]
        self._defaults: tuple[np.ndarray | None, str | None] | None = None

    def rows(self, ids) -> list[int]:
        f = self.f
        out = []
        for t in ids[: f.max_len]:
            if isinstance(t, bool) or not isinstance(t, _INT_TYPES) or t < 0:
                raise FeatureShapeError(f"feature {f.name}: taxonomy id {t!r} is not a non-negative integer")
            r = self.lookup.get(int(t), f.oov_id) if self.lookup is not None else int(t) + 2
            out.append(r if r < f.vocab_size else f.oov_id)
        return out

    def encode(self, ids: np.ndarray) -> np.ndarray:
        """:meth:`rows` of an int64 array of valid (non-negative) ids, vectorised. An id stored as
        INT64_MAX (a valid id too large for int64) maps to OOV, as its true value would."""
        f = self.f
        if self._kept_sorted is None:
            # t + 2 < vocab_size, written so that it cannot overflow
            return np.where(ids < f.vocab_size - 2, ids + 2, f.oov_id)
        keys, rows = self._kept_sorted, self._kept_rows
        if not len(keys):
            return np.full(ids.shape, f.oov_id, dtype=np.int64)
        pos = np.minimum(np.searchsorted(keys, ids), len(keys) - 1)
        r = np.where(keys[pos] == ids, rows[pos], f.oov_id)
        return np.where(r < f.vocab_size, r, f.oov_id)

    def defaults(self) -> tuple[np.ndarray | None, str | None]:
        """The rows of the manifest's default_ids (an absent feature), or the error they raise."""
        if self._defaults is None:
            try:
                self._defaults = (np.asarray(self.rows(self.f.default_ids), dtype=np.int64), None)
            except FeatureShapeError as exc:
                self._defaults = (None, str(exc))
        return self._defaults


@dataclass
class FeatureColumn:
    """One named feature of n entities, Arrow list layout: row i's ids are ``ids[offsets[i]:offsets[i+1]]``."""

    present: np.ndarray
    """[n] bool: the row has the feature; an absent row gets the manifest's default_ids."""
    offsets: np.ndarray
    """[n+1] int64."""
    ids: np.ndarray
    """[total] int64 taxonomy ids; a valid id beyond int64 is stored as INT64_MAX (it maps to OOV as well)."""
    weights: np.ndarray
    """[total] float32, aligned with ids; 1.0 where the row's weights are null."""
    has_weights: np.ndarray
    """[n] bool: the row carried weights (null weights mean all 1.0)."""
    error_at: np.ndarray
    """[n] int64: the row does not fit a manifest feature with max_len > error_at (an invalid id counts only
    within the first max_len ids, as the per-row builder checked them); -1: never fits (a wrong type,
    weights of another length); NO_ERROR: fits."""
    errors: dict[int, str] = field(default_factory=dict)
    """row -> the FeatureShapeError text, for every row whose error_at is not NO_ERROR."""

    @classmethod
    def absent(cls, n: int) -> "FeatureColumn":
        return cls(np.zeros(n, dtype=bool), np.zeros(n + 1, dtype=np.int64), np.zeros(0, dtype=np.int64),
                   np.zeros(0, dtype=np.float32), np.zeros(n, dtype=bool), np.full(n, NO_ERROR, dtype=np.int64))

    def take(self, indices: np.ndarray) -> "FeatureColumn":
        lens = np.diff(self.offsets)[indices]
        offsets = np.zeros(len(indices) + 1, dtype=np.int64)
        np.cumsum(lens, out=offsets[1:])
        src = list_ranges(self.offsets[:-1][indices], lens, offsets)
        return FeatureColumn(self.present[indices], offsets, self.ids[src], self.weights[src],
                             self.has_weights[indices], self.error_at[indices], _take_errors(self.errors, indices))


def _take_errors(errors: dict[int, str], indices: np.ndarray) -> dict[int, str]:
    """``errors`` (row -> text) of the rows ``indices``, renumbered to their positions in ``indices``."""
    if not errors:
        return {}
    hit = np.flatnonzero(np.isin(indices, np.fromiter(errors, dtype=np.int64, count=len(errors))))
    return {int(new): errors[int(indices[new])] for new in hit}


def list_ranges(starts: np.ndarray, lens: np.ndarray, offsets: np.ndarray | None = None) -> np.ndarray:
    """Concatenated ``arange(s, s + l)`` for each (start, len), without a Python loop."""
    if offsets is None:
        offsets = np.zeros(len(lens) + 1, dtype=np.int64)
        np.cumsum(lens, out=offsets[1:])
    total = int(offsets[-1])
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    return np.arange(total, dtype=np.int64) + np.repeat(starts - offsets[:-1], lens)


def record_negative_ids(name: str, ids: np.ndarray, offsets: np.ndarray, error_at: np.ndarray,
                        errors: dict[int, str]) -> None:
    """For each row of a column with a negative id and no error yet: its first negative id's position and
    FeatureShapeError text (the per-row builder's check, for the whole column at once)."""
    bad = np.flatnonzero(ids < 0)
    if not len(bad):
        return
    row_of = np.searchsorted(offsets, bad, side="right") - 1
    first = np.ones(len(bad), dtype=bool)
    first[1:] = row_of[1:] != row_of[:-1]
    rows = row_of[first]
    for i, pos in zip(rows.tolist(), (bad[first] - offsets[rows]).tolist()):
        if error_at[i] == NO_ERROR:
            error_at[i], errors[i] = pos, _bad_id(name, int(ids[offsets[i] + pos]))


@dataclass
class FeatureColumns:
    """A batch of n entities' features, column by column (see :class:`FeatureColumn`)."""

    n: int
    columns: dict[str, FeatureColumn]
    row_errors: dict[int, str] = field(default_factory=dict)
    """Rows that cannot be represented at all (every manifest refuses them), e.g. a record that could not
    be decoded."""

    def column(self, name: str) -> FeatureColumn:
        col = self.columns.get(name)
        return col if col is not None else FeatureColumn.absent(self.n)

    def take(self, indices) -> "FeatureColumns":
        """The rows ``indices`` (in that order), as a new batch."""
        idx = np.asarray(indices, dtype=np.int64)
        return FeatureColumns(len(idx), {name: c.take(idx) for name, c in self.columns.items()},
                              _take_errors(self.row_errors, idx))

    @classmethod
    def concat(cls, parts: list["FeatureColumns"]) -> "FeatureColumns":
        """The rows of every part, one after the other."""
        names = list(dict.fromkeys(name for p in parts for name in p.columns))
        columns, base, row_errors = {}, 0, {}
        for p in parts:
            row_errors.update({base + i: e for i, e in p.row_errors.items()})
            base += p.n
        for name in names:
            cols = [p.column(name) for p in parts]
            offsets, ends, errors, base = [np.zeros(1, dtype=np.int64)], 0, {}, 0
            for p, c in zip(parts, cols):
                offsets.append(c.offsets[1:] - c.offsets[0] + ends)
                ends += int(c.offsets[-1] - c.offsets[0])
                errors.update({base + i: e for i, e in c.errors.items()})
                base += p.n
            columns[name] = FeatureColumn(
                np.concatenate([c.present for c in cols]), np.concatenate(offsets),
                np.concatenate([c.ids[c.offsets[0]:c.offsets[-1]] for c in cols]),
                np.concatenate([c.weights[c.offsets[0]:c.offsets[-1]] for c in cols]),
                np.concatenate([c.has_weights for c in cols]), np.concatenate([c.error_at for c in cols]), errors)
        return cls(base, columns, row_errors)

    @classmethod
    def from_rows(cls, rows: list[dict]) -> "FeatureColumns":
        """The job's dict rows (feature name -> {'ids': [...], 'weights': [...] | None}; a missing or None
        feature is absent). A row that does not fit gets its FeatureShapeError text, never an exception."""
        n = len(rows)
        row_errors: dict[int, str] = {}
        found: dict[str, _Found] = {}
        for i, row in enumerate(rows):
            if type(row) is not dict and not isinstance(row, dict):
                row_errors[i] = f"features must be a map of feature name to {{ids, weights}}, got {type(row).__name__}"
                continue
            for name, feat in row.items():
                if feat is None:
                    continue
                got = found.get(name)
                if got is None:
                    got = found[name] = _Found()
                got.rows.append(i)
                if type(feat) is dict:  # the common shape, checked inline (this loop is the job's per-row cost)
                    raw, weights = feat.get("ids"), feat.get("weights")
                    if type(raw) is list and (weights is None or (type(weights) is list and len(weights) == len(raw))):
                        got.ids.append(raw)
                        got.weights.append(weights)
                        continue
                raw, weights, err = _check_feature(name, feat)
                got.ids.append(raw)
                got.weights.append(weights)
                if err is not None:
                    got.errors[i] = err
        return cls(n, {name: _column(name, n, got) for name, got in found.items()}, row_errors)

    def errors_for(self, manifest: Manifest) -> dict[int, str]:
        """row -> why it does not fit ``manifest`` (the FeatureShapeError the per-row builder raised)."""
        return _errors(manifest, self, {f.name: FeatureEncoder(f) for f in manifest.inputs})[0]


def _check_feature(name: str, feat) -> tuple[list, list | None, str | None]:
    """(ids, weights, error) of one row's feature: the container checks of the per-row builder, in its order
    (the element types are checked for the whole column at once, in :func:`_column`)."""
    if not isinstance(feat, dict):
        return [], None, f"feature {name}: must be a record with ids, got {type(feat).__name__}"
    raw, weights = feat.get("ids"), feat.get("weights")
    if not isinstance(raw, (list, tuple)):
        return [], None, f"feature {name}: ids must be a list, got {type(raw).__name__}"
    if weights is not None:
        if not isinstance(weights, (list, tuple)):
            return [], None, f"feature {name}: weights must be a list or null, got {type(weights).__name__}"
        if len(weights) != len(raw):
            return [], None, f"feature {name}: {len(weights)} weights for {len(raw)} ids"
    return raw, weights, None


@dataclass
class _Found:
    """One feature's entries of a batch of dict rows, in row order (from_rows)."""

    rows: list[int] = field(default_factory=list)
    ids: list = field(default_factory=list)
    weights: list = field(default_factory=list)      # list or None per entry
    errors: dict[int, str] = field(default_factory=dict)  # container errors (ids left empty)


def _column(name: str, n: int, got: _Found) -> FeatureColumn:
    rows = np.asarray(got.rows, dtype=np.int64)
    lens = np.zeros(n, dtype=np.int64)
    lens[rows] = np.fromiter(map(len, got.ids), dtype=np.int64, count=len(got.ids))
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lens, out=offsets[1:])
    present = np.zeros(n, dtype=bool)
    present[rows] = True
    error_at = np.full(n, NO_ERROR, dtype=np.int64)
    errors: dict[int, str] = {}
    # weights: the rows that carry them must be numbers (not bool); the others are 1.0
    weighted = [(i, w) for i, w in zip(got.rows, got.weights) if w is not None]
    has_w = np.zeros(n, dtype=bool)
    has_w[[i for i, _ in weighted]] = True
    weights = np.ones(int(offsets[-1]), dtype=np.float32)
    if weighted:
        flat_w = list(chain.from_iterable(w for _, w in weighted))
        if not set(map(type, flat_w)) <= {float, int}:  # rare types: check row by row
            for i, w in weighted:
                if not all(isinstance(x, _NUMBER_TYPES) and not isinstance(x, bool) for x in w):
                    error_at[i], errors[i] = -1, f"feature {name}: weights must be numbers"
            weighted = [(i, w) for i, w in weighted if error_at[i] == NO_ERROR]
            flat_w = list(chain.from_iterable(w for _, w in weighted))
        mask = np.repeat(has_w & (error_at == NO_ERROR), lens)
        try:
            weights[mask] = np.array(flat_w, dtype=np.float32)
        except OverflowError:  # an int beyond any float (the per-row builder crashed on it)
            for i, w in weighted:
                try:
                    weights[offsets[i]:offsets[i + 1]] = np.array(w, dtype=np.float32)
                except OverflowError:
                    error_at[i], errors[i] = -1, f"feature {name}: weights must be numbers a float32 can hold"
    # ids: non-negative integers (not bool); the first invalid one of a row is its error position
    flat = list(chain.from_iterable(got.ids))
    ids = None
    if set(map(type, flat)) <= {int}:
        try:
            ids = np.array(flat, dtype=np.int64)
        except OverflowError:  # a valid id beyond int64
            ids = None
    if ids is not None:
        record_negative_ids(name, ids, offsets, error_at, errors)
    else:
        ids = np.zeros(len(flat), dtype=np.int64)
        for i, raw in zip(got.rows, got.ids):
            start = int(offsets[i])
            for pos, t in enumerate(raw):
                if isinstance(t, bool) or not isinstance(t, _INT_TYPES) or t < 0:
                    if error_at[i] == NO_ERROR:
                        error_at[i], errors[i] = pos, _bad_id(name, t)
                    break
                ids[start + pos] = min(int(t), INT64_MAX)
    for i, err in got.errors.items():  # the container errors come first, whatever the elements
        error_at[i], errors[i] = -1, err
    return FeatureColumn(present, offsets, ids, weights, has_w, error_at, errors)


def _bad_id(name: str, t) -> str:
    return f"feature {name}: taxonomy id {t!r} is not a non-negative integer"


def _errors(manifest: Manifest, cols: FeatureColumns, encoders: dict[str, FeatureEncoder]):
    """(row -> error text, the error the per-row builder raised for the whole batch or None). A row's error
    is its first feature in manifest order that does not fit; the batch's is the first such feature's
    first row."""
    errors = dict(cols.row_errors)
    first = (min(errors), errors[min(errors)]) if errors else None
    for f in manifest.inputs:
        col = cols.columns.get(f.name)
        rows_f: list[int] = []
        if col is not None and col.errors:
            rows_f = np.flatnonzero(col.error_at < f.max_len).tolist()
            texts = col.errors
        else:
            texts = {}
        default_error = encoders[f.name].defaults()[1]
        if default_error is not None:
            absent = np.flatnonzero(~col.present) if col is not None else np.arange(cols.n)
            texts = {**texts, **dict.fromkeys(absent.tolist(), default_error)}
            rows_f = sorted(set(rows_f) | set(absent.tolist()))
        if rows_f and first is None:
            first = (rows_f[0], texts[rows_f[0]])
        for i in rows_f:
            errors.setdefault(i, texts[i])
    return errors, first


def build_feed(manifest: Manifest, cols: FeatureColumns,
               encoders: dict[str, FeatureEncoder] | None = None) -> tuple[dict[str, np.ndarray], dict[int, str]]:
    """The ONNX feed of every row of ``cols`` and {row: why it does not fit}. A row that does not fit gets
    some tensor values (never to be run: the caller drops it), so one build serves the whole batch."""
    encoders = encoders or {f.name: FeatureEncoder(f) for f in manifest.inputs}
    errors, _ = _errors(manifest, cols, encoders)
    return _tensors(manifest, cols, encoders), errors


def build_inputs_columns(manifest: Manifest, cols: FeatureColumns,
                         encoders: dict[str, FeatureEncoder] | None = None) -> dict[str, np.ndarray]:
    """The ONNX feed dict of ``cols``; raises FeatureShapeError if a row does not fit (the per-row
    builder's first error: first feature in manifest order, then first row)."""
    encoders = encoders or {f.name: FeatureEncoder(f) for f in manifest.inputs}
    _, first = _errors(manifest, cols, encoders)
    if first is not None:
        raise FeatureShapeError(first[1])
    return _tensors(manifest, cols, encoders)


def _tensors(manifest: Manifest, cols: FeatureColumns, encoders: dict[str, FeatureEncoder]) -> dict[str, np.ndarray]:
    n = cols.n
    feed: dict[str, np.ndarray] = {}
    for f in manifest.inputs:
        enc = encoders[f.name]
        ids = np.full((n, f.max_len), f.pad_id, dtype=np.int64)
        w = np.zeros((n, f.max_len), dtype=np.float32) if f.weighted else None
        col = cols.columns.get(f.name)
        present = col.present if col is not None else np.zeros(n, dtype=bool)
        if col is not None and f.max_len > 0:
            # ragged -> [n, max_len]: the first max_len ids of each row, scattered into its padded row
            k = np.minimum(np.diff(col.offsets), f.max_len)
            k_offsets = np.zeros(n + 1, dtype=np.int64)
            np.cumsum(k, out=k_offsets[1:])
            if k_offsets[-1]:
                src = list_ranges(col.offsets[:-1], k, k_offsets)
                flat_rows = np.repeat(np.arange(n, dtype=np.int64), k)
                flat_cols = np.arange(len(src), dtype=np.int64) - k_offsets[flat_rows]
                vals = col.ids[src]
                ok = vals >= 0  # negative ids only in rows that do not fit; keep their tensors in range
                ids[flat_rows, flat_cols] = enc.encode(np.where(ok, vals, 0))
                if w is not None:
                    w[flat_rows, flat_cols] = col.weights[src]
        defaults, _ = enc.defaults()
        if defaults is not None and len(defaults) and not present.all():
            absent = ~present
            ids[absent, : len(defaults)] = defaults
            if w is not None:
                w[absent, : len(defaults)] = 1.0
        feed[f.onnx_input] = ids
        if w is not None:
            feed[f.weight_input] = w
    return feed


def build_inputs(manifest: Manifest, rows: list[dict], encoders: dict[str, FeatureEncoder] | None = None) -> dict[str, np.ndarray]:
    """``rows``: one dict per entity, feature name -> {'ids': [...], 'weights': [...] | None}.
    A missing feature uses the manifest's ``default_ids``. Returns the ONNX feed dict; raises
    FeatureShapeError if a row does not fit."""
    return build_inputs_columns(manifest, FeatureColumns.from_rows(rows), encoders)
