"""Avro encoding of every message on the wire, with fastavro.

Wire format: Avro *single-object encoding* (Avro spec 1.8+): the two marker bytes ``C3 01``, the
8-byte little-endian CRC-64-AVRO fingerprint of the writer schema's parsing canonical form, then the
binary datum. We chose it over the Confluent wire format because it identifies the writer schema
without a schema-registry service: any reader holding the writer's ``.avsc`` (all versions live in
``schemas/``, older ones under ``schemas/history/``) can resolve it against its own reader schema,
so a producer may add an optional field before every consumer has upgraded. Bytes that do not start
with the marker, or whose fingerprint no known schema has, raise :class:`UnknownSchemaError`.
"""

from __future__ import annotations

import io
import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fastavro
from fastavro.schema import fingerprint, to_parsing_canonical_form

from nearline import DATA_ROOT

MAGIC = b"\xc3\x01"
HEADER_LEN = 10
SCHEMAS_DIR = DATA_ROOT / "schemas"


class CodecError(ValueError):
    """A message could not be encoded or decoded; the text says why."""


class UnknownSchemaError(CodecError):
    """The bytes are not single-object Avro, or name a writer schema nobody registered."""


def schema_fingerprint(parsed_schema: Any) -> bytes:
    """The 8-byte little-endian CRC-64-AVRO fingerprint the single-object header carries."""
    hex_fp = fingerprint(to_parsing_canonical_form(parsed_schema), "CRC-64-AVRO")
    return int(hex_fp, 16).to_bytes(8, "little")


@dataclass
class SchemaStore:
    """Known schemas: one *reader* schema per record name, and every *writer* schema by fingerprint."""

    readers: dict[str, Any] = field(default_factory=dict)
    writers: dict[bytes, Any] = field(default_factory=dict)
    fingerprints: dict[str, bytes] = field(default_factory=dict)  # record name -> current writer fp

    def add(self, schema: dict | Any, *, as_reader: bool = True) -> bytes:
        parsed = fastavro.parse_schema(schema) if isinstance(schema, dict) else schema
        fp = schema_fingerprint(parsed)
        self.writers[fp] = parsed
        if as_reader:
            name = parsed["name"].split(".")[-1]
            self.readers[name] = parsed
            self.fingerprints[name] = fp
        return fp

    @classmethod
    def from_dir(cls, directory: Path = SCHEMAS_DIR) -> "SchemaStore":
        store = cls()
        # history first so the current file of each name ends up as the reader/writer schema
        for path in sorted((directory / "history").glob("*.avsc")) if (directory / "history").exists() else []:
            store.add(json.loads(path.read_text()), as_reader=False)
        for path in sorted(directory.glob("*.avsc")):
            store.add(json.loads(path.read_text()))
        if not store.readers:
            raise CodecError(f"no .avsc schemas found in {directory}")
        return store


class Codec:
    """Encode/decode records of the named schemas in single-object encoding."""

    def __init__(self, store: SchemaStore | None = None):
        self.store = store or default_store()

    def encode(self, name: str, record: dict) -> bytes:
        try:
            schema = self.store.readers[name]
        except KeyError:
            raise CodecError(f"no schema named {name!r}; known: {sorted(self.store.readers)}") from None
        buf = io.BytesIO()
        buf.write(MAGIC)
        buf.write(self.store.fingerprints[name])
        try:
            fastavro.schemaless_writer(buf, schema, record)
        except (ValueError, TypeError, KeyError, AttributeError, struct.error) as exc:
            raise CodecError(f"record does not fit schema {name}: {exc}") from exc
        return buf.getvalue()

    def decode(self, data: bytes, expect: str | None = None) -> dict:
        """Decode ``data``; with ``expect``, resolve against that reader schema and refuse other types."""
        if not isinstance(data, (bytes, bytearray, memoryview)) or len(data) < HEADER_LEN or data[:2] != MAGIC:
            head = bytes(data[:12]).hex() if isinstance(data, (bytes, bytearray, memoryview)) else type(data).__name__
            raise UnknownSchemaError(f"not an Avro single-object message (starts {head!r})")
        fp = bytes(data[2:HEADER_LEN])
        writer = self.store.writers.get(fp)
        if writer is None:
            raise UnknownSchemaError(f"unknown writer schema fingerprint {fp.hex()}")
        writer_name = writer["name"].split(".")[-1]
        if expect is not None and writer_name != expect:
            raise CodecError(f"expected a {expect} message, got {writer_name}")
        reader = self.store.readers.get(expect or writer_name, writer)
        try:
            # resolving a schema against itself is pure cost (measured 2x slower decode): skip it
            return fastavro.schemaless_reader(io.BytesIO(data[HEADER_LEN:]), writer, None if reader is writer else reader)
        except Exception as exc:  # fastavro raises many types on truncated/garbage payloads
            raise CodecError(f"malformed {writer_name} payload: {type(exc).__name__}: {exc}") from exc


_DEFAULT: SchemaStore | None = None


def default_store() -> SchemaStore:
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = SchemaStore.from_dir()
    return _DEFAULT
