"""Decode a batch of FeatureSnapshot records at once, straight into FeatureColumns (the backfill's input).

fastavro costs 15-30 us per snapshot record in Python objects; the backfill only needs the features as
arrays. So the datums whose writer schema is the current FeatureSnapshot schema are concatenated into one
block of an in-memory Avro object container file and read by polars-avro (Rust, arrow-avro) in one call
(~1-2 us per record, bench/snapshot_decode_bench.py); the map column's Arrow buffers become FeatureColumns
with numpy, no Python object per feature or id. Every other record (an older writer schema, a schema id
from another registry, anything odd) goes through ``Codec.decode`` one by one and is merged back in its
place; a record that cannot be decoded gets a per-row error (the backfill dead-letters it), never an
exception for the batch.

Why each datum's framing is checked before the block read (:func:`_framed`, numpy, ~1 us per record):
Avro datums carry no length of their own, so a corrupt one would shift every later record of the block;
and arrow-avro as polars-avro 0.13.0 ships it spins forever on a block with bytes left after the last
record (measured: one datum with two trailing bytes hangs the read at 100% CPU). A datum goes into the
block only if it parses under the schema to exactly its own length; the others take the one-by-one path.
If the block read raises anyway (e.g. invalid UTF-8), every record of it takes the one-by-one path.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass

import numpy as np

from nearline.io.codec import CONFLUENT_HEADER_LEN, CONFLUENT_MAGIC, HEADER_LEN, MAGIC, Codec, CodecError, zigzag_varint
from nearline.registry.features import NO_ERROR, FeatureColumn, FeatureColumns, list_ranges, record_negative_ids

SCHEMA = "FeatureSnapshot"
SCANNED_FINGERPRINT = bytes.fromhex("ad61d4ee4a91fd29")
"""The FeatureSnapshot schema :class:`_Scan` walks (fingerprint of its parsing canonical form). Records of
any other current schema all take the one-by-one path; tests/unit/test_snapshot_columns.py fails until
_Scan and this are updated with the schema."""


@dataclass
class SnapshotColumns:
    """n decoded snapshot records. Rows in ``errors`` could not be decoded: their other fields are None
    and their features carry a row error (no manifest scores them)."""

    entity_type: list[str | None]
    entity_id: list[str | None]
    version: list[int | None]
    partial: list[bool | None]
    missing: list[list[str] | None]
    errors: dict[int, str]
    features: FeatureColumns
    from_block: np.ndarray | None = None
    """[n] bool: the record was read in the one block (the others one by one)."""

    def __len__(self) -> int:
        return self.features.n

    def take(self, indices) -> "SnapshotColumns":
        """The rows ``indices`` (in that order), e.g. the ones of one entity type that need scoring."""
        idx = np.asarray(indices, dtype=np.int64)
        pick = idx.tolist()
        where = {old: new for new, old in enumerate(pick) if old in self.errors} if self.errors else {}
        return SnapshotColumns([self.entity_type[i] for i in pick], [self.entity_id[i] for i in pick],
                               [self.version[i] for i in pick], [self.partial[i] for i in pick],
                               [self.missing[i] for i in pick], {new: self.errors[old] for old, new in where.items()},
                               self.features.take(idx), self.from_block[idx])


def decode_snapshots(values: list[bytes], codec: Codec) -> SnapshotColumns:
    """Decode snapshot record values (single-object or Confluent-framed) in bulk; see the module doc.
    Raises only what ``Codec.decode`` raises for a transient reason (SchemaRegistryUnavailable)."""
    n = len(values)
    fp = codec.store.fingerprints.get(SCHEMA)
    sid = codec.registry.ids.get(SCHEMA) if codec.registry is not None else None
    if fp != SCANNED_FINGERPRINT:
        fp = sid = None
    prefix = MAGIC + fp if fp is not None else None
    fast, datums = [], []
    for i, v in enumerate(values):
        if not isinstance(v, (bytes, bytearray)):
            continue
        if v[:HEADER_LEN] == prefix:
            fast.append(i)
            datums.append(bytes(v[HEADER_LEN:]))
        elif sid is not None and len(v) >= CONFLUENT_HEADER_LEN and v[:1] == CONFLUENT_MAGIC \
                and int.from_bytes(v[1:CONFLUENT_HEADER_LEN], "big") == sid:
            fast.append(i)
            datums.append(bytes(v[CONFLUENT_HEADER_LEN:]))
    block = None
    if datums:
        framed = _framed(datums)
        if not framed.all():
            fast = [i for i, ok in zip(fast, framed) if ok]
            datums = [d for d, ok in zip(datums, framed) if ok]
        if datums:
            try:
                block = _read_block(datums, codec.store.readers[SCHEMA], fp)
            except Exception:  # a datum arrow-avro refuses (e.g. invalid UTF-8): decode them one by one
                block, fast = None, []
    if block is None:
        fast = []
    is_fast = np.zeros(n, dtype=bool)
    is_fast[fast] = True
    slow = np.flatnonzero(~is_fast).tolist()

    out = SnapshotColumns([None] * n, [None] * n, [None] * n, [None] * n, [None] * n, {}, FeatureColumns(0, {}),
                          is_fast)
    for name in ("entity_type", "entity_id", "version", "partial", "missing") if fast else ():
        col = block.column(name)
        # numbers through numpy: Arrow's to_pylist costs ~0.2 us an element
        got = _np(col).tolist() if name in ("version", "partial") else col.to_pylist()
        if not slow:
            setattr(out, name, got)
            continue
        col = getattr(out, name)
        for i, x in zip(fast, got):
            col[i] = x
    slow_rows, slow_errors = [], {}
    for local, i in enumerate(slow):
        try:
            rec = codec.decode(values[i], expect=SCHEMA)
        except CodecError as exc:
            out.errors[i] = slow_errors[local] = f"snapshot record could not be decoded: {exc}"
            slow_rows.append({})
            continue
        out.entity_type[i], out.entity_id[i], out.version[i] = rec["entity_type"], rec["entity_id"], rec["version"]
        out.partial[i], out.missing[i] = rec["partial"], rec["missing"]
        slow_rows.append(rec["features"])
    slow_cols = FeatureColumns.from_rows(slow_rows)
    slow_cols.row_errors.update(slow_errors)
    if not fast:
        out.features = slow_cols
    elif not slow:
        out.features = _arrow_features(block.column("features"))
    else:  # both kinds: concatenated as [fast..., slow...], then put back in the records' order
        order = np.empty(n, dtype=np.int64)
        order[fast] = np.arange(len(fast))
        order[slow] = len(fast) + np.arange(len(slow))
        out.features = FeatureColumns.concat([_arrow_features(block.column("features")), slow_cols]).take(order)
    return out


# ---- the block read --------------------------------------------------------------------------------

_HEADERS: dict[bytes, bytes] = {}  # schema fingerprint -> OCF header


def _read_block(datums: list[bytes], parsed_schema, fingerprint: bytes):
    """One object-container-file block of the datums, read by polars-avro: a pyarrow Table, one chunk."""
    import fastavro
    import polars_avro

    key = fingerprint
    header = _HEADERS.get(key)
    if header is None:
        buf = io.BytesIO()
        fastavro.writer(buf, parsed_schema, [])  # the header only: magic, schema, codec null, sync marker
        header = _HEADERS[key] = buf.getvalue()
    body = b"".join(datums)
    ocf = b"".join((header, zigzag_varint(len(datums)), zigzag_varint(len(body)), body, header[-16:]))
    try:
        # polars-avro's own Arrow source, without the polars LazyFrame around it: 1.3 us a record in
        # batches of 1024 against 4 through read_avro (measured); the version is pinned for it
        from polars_avro._avro_rs import AvroSource
    except ImportError:
        table = polars_avro.read_avro(io.BytesIO(ocf), batch_size=len(datums)).to_arrow()
    else:
        import pyarrow as pa

        src = AvroSource([lambda: contextlib.nullcontext(io.BytesIO(ocf))], False, False)
        table = pa.Table.from_batches([pa.record_batch(rb) for rb in src.batch_iter(len(datums), None)])
    table = table.combine_chunks()
    if table.num_rows != len(datums):
        raise CodecError(f"block of {len(datums)} snapshot records read as {table.num_rows} rows")
    return table


def _np(arr) -> np.ndarray:
    return arr.to_numpy(zero_copy_only=False)


def _arrow_features(chunked) -> FeatureColumns:
    """The Map(String, Struct{ids: List(Int64), weights: List(Float32) | null}) column as FeatureColumns,
    with the same per-row errors FeatureColumns.from_rows gives the decoded dicts."""
    import pyarrow as pa
    import pyarrow.compute as pc

    fmap = chunked.chunk(0) if chunked.num_chunks == 1 else pa.concat_arrays(chunked.chunks)
    n = len(fmap)
    map_off = _np(fmap.offsets).astype(np.int64)
    # the offsets index the whole child arrays (a sliced map starts past 0); struct fields and list offsets
    # of a slice are already relative to it
    first, count = int(map_off[0]), int(map_off[-1] - map_off[0])
    keys, items = fmap.keys.slice(first, count), fmap.items.slice(first, count)
    ids_l, w_l = items.field("ids"), items.field("weights")
    ids_off, ids_vals = _np(ids_l.offsets).astype(np.int64), _np(ids_l.values).astype(np.int64, copy=False)
    w_off, w_vals = _np(w_l.offsets).astype(np.int64), _np(w_l.values).astype(np.float32, copy=False)
    w_null = _np(w_l.is_null())
    entry_row = np.repeat(np.arange(n, dtype=np.int64), np.diff(map_off))
    encoded = pc.dictionary_encode(keys)
    codes = _np(encoded.indices)
    columns = {}
    for code, name in enumerate(encoded.dictionary.to_pylist()):
        sel = np.flatnonzero(codes == code)
        rows = entry_row[sel]
        last = np.ones(len(sel), dtype=bool)  # a key repeated in one map: the last wins, as in a decoded dict
        last[:-1] = rows[:-1] != rows[1:]
        sel, rows = sel[last], rows[last]
        lens_e = ids_off[sel + 1] - ids_off[sel]
        has_w_e = ~w_null[sel]
        wlens_e = w_off[sel + 1] - w_off[sel]
        wrong = has_w_e & (wlens_e != lens_e)
        wrong_ids = lens_e[wrong]
        lens_e[wrong] = 0  # a row that never fits keeps no ids (as in from_rows)
        lens = np.zeros(n, dtype=np.int64)
        lens[rows] = lens_e
        offsets = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(lens, out=offsets[1:])
        present = np.zeros(n, dtype=bool)
        present[rows] = True
        ids = ids_vals[list_ranges(ids_off[sel], lens_e)]
        error_at = np.full(n, NO_ERROR, dtype=np.int64)
        errors: dict[int, str] = {}
        for i, wl, il in zip(rows[wrong].tolist(), wlens_e[wrong].tolist(), wrong_ids.tolist()):
            error_at[i], errors[i] = -1, f"feature {name}: {wl} weights for {il} ids"
        ok = has_w_e & ~wrong
        has_w = np.zeros(n, dtype=bool)
        has_w[rows[ok]] = True
        weights = np.ones(int(offsets[-1]), dtype=np.float32)
        if ok.any():
            ok_rows = np.zeros(n, dtype=bool)
            ok_rows[rows[ok]] = True
            w = w_vals[list_ranges(w_off[sel[ok]], lens_e[ok])]
            nan = np.isnan(w)
            if nan.any():  # the dict path widens each float to a Python float: a signaling NaN comes back quiet
                w = w.copy()
                w.view(np.uint32)[nan] |= 0x00400000
            weights[np.repeat(ok_rows, lens)] = w
        record_negative_ids(name, ids, offsets, error_at, errors)
        columns[name] = FeatureColumn(present, offsets, ids, weights, has_w, error_at, errors)
    return FeatureColumns(n, columns)


# ---- the framing check -----------------------------------------------------------------------------

class _Scan:
    """Parses many FeatureSnapshot datums in lockstep with numpy (positions only, no values kept) to find
    the ones that are exactly one record of the schema: strings and arrays within their datum, a union
    branch of 0 or 1, a boolean of 0 or 1, block byte sizes that match, and nothing left over.

    Positions only move forward, so one that overruns its datum is caught by the final ``p == end``; it is
    only clamped to the buffer on the way. Counts are checked against the bytes left (every item takes at
    least one), so a corrupt count cannot make a loop long."""

    def __init__(self, datums: list[bytes]):
        lens = np.fromiter(map(len, datums), dtype=np.int64, count=len(datums))
        self.ends = np.cumsum(lens)
        self.starts = self.ends - lens
        self.limit = int(self.ends[-1]) if len(datums) else 0
        self.buf = np.frombuffer(b"".join(datums) + bytes(16), dtype=np.uint8)  # padding: reads stay in bounds
        self.ok = np.ones(len(datums), dtype=bool)
        self._rank = None

    def rank(self) -> tuple[np.ndarray, np.ndarray]:
        """(stops, rank): the last byte of every varint, and for each byte how many stops come before it, so
        the first stop at or after byte i is stops[rank[i]] (a gather, not a search)."""
        if self._rank is None:
            is_stop = self.buf < 0x80
            rank = np.cumsum(is_stop, dtype=np.int32 if len(self.buf) < 2**31 else np.int64)
            rank -= is_stop
            self._rank = np.flatnonzero(is_stop), rank
        return self._rank

    def _fail(self, a: np.ndarray, bad: np.ndarray) -> None:
        if bad.any():
            self.ok[a[bad]] = False

    def _clamp(self, p: np.ndarray) -> np.ndarray:
        return np.minimum(p, self.limit)

    def varint(self, a: np.ndarray, p: np.ndarray, value: bool = True):
        """(position after the zigzag varint at p, its value) for the datums a."""
        v = self.buf[p].astype(np.int64)
        q = p + 1
        multi = np.flatnonzero(v >= 0x80)  # most varints here are one byte (lengths and counts below 64)
        if len(multi):
            stops, rank = self.rank()
            pm = p[multi]
            size = stops[rank[pm]] + 1 - pm
            self._fail(a[multi], size > 10)
            size = np.minimum(size, 10)
            q[multi] = self._clamp(pm + size)
            if value:
                vm = v[multi].astype(np.uint64) & np.uint64(0x7F)
                for k in range(1, int(size.max())):
                    m = size > k
                    vm[m] |= (self.buf[pm[m] + k] & 0x7F).astype(np.uint64) << np.uint64(7 * k)
                v[multi] = (vm >> np.uint64(1)).astype(np.int64) ^ -(vm & np.uint64(1)).astype(np.int64)
                one = np.ones(len(v), dtype=bool)
                one[multi] = False
                v[one] = (v[one] >> 1) ^ -(v[one] & 1)
                return q, v
        return q, ((v >> 1) ^ -(v & 1)) if value else None

    def string(self, a, p):
        q, size = self.varint(a, p)
        self._fail(a, size < 0)
        return self._clamp(q + np.maximum(size, 0))

    def blocks(self, a, p, items):
        """An array or map: blocks of (count, [byte size if count < 0], items) until a zero count."""
        p = p.copy()
        act = np.arange(len(a))
        while len(act):
            q, count = self.varint(a[act], p[act])
            neg = count < 0
            sized_end = None
            if neg.any():
                q2, nbytes = self.varint(a[act[neg]], q[neg])
                q[neg], count[neg] = q2, -count[neg]
                sized_end = np.full(len(act), -1, dtype=np.int64)
                sized_end[neg] = q2 + nbytes
            self._fail(a[act], count > self.ends[a[act]] - q)  # every item takes at least one byte
            count = np.where(self.ok[a[act]], count, 0)
            done = count == 0
            p[act[done]] = q[done]
            keep = ~done
            act, q, count = act[keep], q[keep], count[keep]
            if len(act):
                p[act] = items(a[act], q, count)
                if sized_end is not None:
                    sized_end = sized_end[keep]
                    self._fail(a[act], (sized_end >= 0) & (sized_end != p[act]))
        return p

    def longs(self, a, p, count):
        """The end of ``count`` varints from p: just after the count-th varint end at or after p."""
        stops, rank = self.rank()
        k = rank[p] + count - 1
        over = k >= len(stops)
        self._fail(a, over)
        return self._clamp(stops[np.where(over, len(stops) - 1, k)] + 1)

    def floats(self, a, p, count):
        return self._clamp(p + 4 * count)

    def strings(self, a, p, count):
        p = p.copy()
        for k in range(int(count.max())):
            m = np.flatnonzero(count > k)
            p[m] = self.string(a[m], p[m])
        return p

    def entries(self, a, p, count):
        """Map entries: key, then SnapshotFeature {ids: array<long>, weights: union[null, array<float>]}."""
        p = p.copy()
        for k in range(int(count.max())):
            m = np.flatnonzero(count > k) if k else np.arange(len(a))
            am = a[m]
            q = self.string(am, p[m])
            q = self.blocks(am, q, self.longs)
            q, branch = self.varint(am, q)
            self._fail(am, (branch != 0) & (branch != 1))
            arr = np.flatnonzero(branch == 1)
            if len(arr):
                q[arr] = self.blocks(am[arr], q[arr], self.floats)
            p[m] = q
        return p

    def run(self) -> np.ndarray:
        a = np.arange(len(self.starts))
        p = self.string(a, self.starts)          # entity_type
        p = self.string(a, p)                    # entity_id
        p, _ = self.varint(a, p, value=False)    # version
        self._fail(a, self.buf[p] > 1)           # partial: a boolean byte
        p = self._clamp(p + 1)
        p = self.blocks(a, p, self.strings)      # missing
        p = self.blocks(a, p, self.entries)      # features
        p, _ = self.varint(a, p, value=False)    # written_at
        self._fail(a, p != self.ends)
        return self.ok


def _framed(datums: list[bytes]) -> np.ndarray:
    """[len(datums)] bool: the datum is exactly one FeatureSnapshot record (current schema)."""
    return _Scan(datums).run()
