"""Avro encoding of every message on the wire, with fastavro.

Wire format: Avro *single-object encoding* (Avro spec 1.8+): the two marker bytes ``C3 01``, the
8-byte little-endian CRC-64-AVRO fingerprint of the writer schema's parsing canonical form, then the
binary datum. We chose it over the Confluent wire format because it identifies the writer schema
without a schema-registry service: any reader holding the writer's ``.avsc`` (all versions live in
``schemas/``, older ones under ``schemas/history/``) can resolve it against its own reader schema,
so a producer may add an optional field before every consumer has upgraded. Bytes that do not start
with the marker, or whose fingerprint no known schema has, raise :class:`UnknownSchemaError`.

Second wire format, ``kafka.wire_format: confluent`` (for shops whose tools speak Confluent's): the
magic byte ``00``, the 4-byte big-endian schema id a Confluent-compatible registry assigned, then the
same binary datum (still written and read with fastavro). Ids come from confluent-kafka's
``SchemaRegistryClient`` (registered under TopicNameStrategy subjects ``<topic>-value``) and are cached
for the life of the process and in pickled codecs, so a registry outage after start-up stops nothing
already known. Decoding picks the format by the first byte, so a topic can be migrated message by
message; a writer schema fetched by id is resolved against our reader schema like a local one.
"""

from __future__ import annotations

import io
import json
import logging
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fastavro
from fastavro.schema import fingerprint, to_parsing_canonical_form

from nearline import DATA_ROOT

log = logging.getLogger(__name__)
MAGIC = b"\xc3\x01"
HEADER_LEN = 10
CONFLUENT_MAGIC = b"\x00"
CONFLUENT_HEADER_LEN = 5  # magic + 4-byte big-endian schema id
WIRE_FORMATS = ("single-object", "confluent")
SCHEMAS_DIR = DATA_ROOT / "schemas"


class CodecError(ValueError):
    """A message could not be encoded or decoded; the text says why."""


class UnknownSchemaError(CodecError):
    """The bytes are not single-object Avro, or name a writer schema nobody registered."""


class SchemaRegistryUnavailable(ConnectionError):
    """The schema registry did not answer (after retries). Transient (a ConnectionError): callers back
    off and retry; a record is never dead-lettered for it."""


def zigzag_varint(n: int) -> bytes:
    """Avro's binary int/long: zigzag, then a little-endian base-128 varint (also block counts and sizes)."""
    n = (n << 1) ^ (n >> 63)
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


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


class RegistrySchemas:
    """Schema ids of one Confluent-compatible registry, through confluent-kafka's SchemaRegistryClient.

    Both caches (name -> id we registered, id -> writer schema) survive pickling (Beam ships codecs to
    workers); the HTTP client does not and is made again on first use. Every registry call is retried
    with doubling backoff for ``retry_s`` (None: until it succeeds or a stop is requested, the
    backpressure of the long-running services), then :class:`SchemaRegistryUnavailable` is raised; an
    answer "no such id" is not retried (the message is bad: :class:`UnknownSchemaError`).
    """

    def __init__(self, url: str, username: str = "", password: str = "", retry_s: float | None = 30.0,
                 timeout_s: float = 5.0):
        self.url, self.username, self.password = url.rstrip("/"), username, password
        self.retry_s, self.timeout_s = retry_s, timeout_s
        self.ids: dict[str, int] = {}
        self.writers: dict[int, Any] = {}
        self._client = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_client": None}

    def client(self):
        if self._client is None:
            from confluent_kafka.schema_registry import SchemaRegistryClient

            conf: dict[str, Any] = {"url": self.url, "timeout": self.timeout_s, "max.retries": 0}
            if self.username:
                conf["basic.auth.user.info"] = f"{self.username}:{self.password}"
            self._client = SchemaRegistryClient(conf)
        return self._client

    def _call(self, what: str, fn):
        from confluent_kafka.schema_registry.error import SchemaRegistryError

        from nearline.core.lifecycle import backoff_sleep

        deadline, delay = time.monotonic() + (float("inf") if self.retry_s is None else self.retry_s), 0.2
        while True:
            try:
                return fn()
            except SchemaRegistryError as exc:
                status = exc.http_status_code
                if 400 <= status < 500 and status not in (408, 429):
                    raise  # the registry answered no: retrying cannot help
                err = exc
            except Exception as exc:  # transport errors of the httpx confluent-kafka bundles: refused, reset, timeout
                err = exc
            if time.monotonic() + delay > deadline:
                raise SchemaRegistryUnavailable(f"schema registry {self.url} did not answer while {what} "
                                                f"(retried {self.retry_s:.0f}s): {type(err).__name__}: {err}") from None
            log.warning("schema registry %s failed while %s (%s); retrying in %.1fs", self.url, what, err, delay)
            backoff_sleep(delay)
            delay = min(delay * 2, 10.0)

    def register(self, name: str, schema_json: str, subjects: list[str]) -> int:
        """The id of ``schema_json`` (registered under every subject, idempotent), cached by record name."""
        sid = self.ids.get(name)
        if sid is None:
            from confluent_kafka.schema_registry import Schema

            for subject in subjects:
                got = self._call(f"registering {name} under {subject}",
                                 lambda subject=subject: self.client().register_schema(subject, Schema(schema_json, "AVRO")))
                sid = got if sid is None else sid  # the first subject's id is the one we write
            self.ids[name] = sid
        return sid

    def writer(self, schema_id: int) -> Any | None:
        """The parsed writer schema of ``schema_id``, or None when the registry has no such id."""
        if schema_id in self.writers:
            return self.writers[schema_id]
        from confluent_kafka.schema_registry.error import SchemaRegistryError

        try:
            got = self._call(f"fetching schema id {schema_id}", lambda: self.client().get_schema(schema_id))
        except SchemaRegistryError as exc:
            if exc.http_status_code == 404:
                return None
            raise CodecError(f"schema registry refused schema id {schema_id}: {exc}") from None
        try:
            parsed = fastavro.parse_schema(json.loads(got.schema_str))
        except Exception as exc:  # a non-Avro or broken schema under that id
            raise CodecError(f"schema id {schema_id} is not a usable Avro schema: {exc}") from None
        self.writers[schema_id] = parsed
        return parsed


class Codec:
    """Encode records of the named schemas in the configured wire format; decode either format.

    ``registry`` (a :class:`RegistrySchemas`) is needed to write ``confluent`` and to read
    Confluent-framed bytes; ``subjects`` maps a record name to the registry subjects it is written under
    (see :func:`subjects_for`; a name without an entry uses its full record name, RecordNameStrategy).
    """

    def __init__(self, store: SchemaStore | None = None, *, wire_format: str = "single-object",
                 registry: RegistrySchemas | None = None, subjects: dict[str, list[str]] | None = None):
        if wire_format not in WIRE_FORMATS:
            raise CodecError(f"wire format must be one of {WIRE_FORMATS}, not {wire_format!r}")
        if wire_format == "confluent" and registry is None:
            raise CodecError("wire format 'confluent' needs a schema registry (kafka.schema_registry_url)")
        self.store = store or default_store()
        self.wire_format, self.registry, self.subjects = wire_format, registry, subjects or {}

    def schema_id(self, name: str) -> int:
        """The registry id of record ``name``'s current schema (registered on first use, then cached)."""
        sid = self.registry.ids.get(name)  # the hot path: one dict lookup
        if sid is None:
            parsed = self.store.readers[name]
            sid = self.registry.register(name, json.dumps(_plain_schema(parsed)), self.subjects.get(name) or [parsed["name"]])
        return sid

    def register_all(self) -> dict[str, int]:
        """Register every current schema now (start-up), so encoding never waits for the registry."""
        return {name: self.schema_id(name) for name in sorted(self.store.readers)}

    def header(self, name: str) -> bytes:
        """The bytes before the datum of a record ``name`` in this codec's wire format: ``C3 01`` + the
        fingerprint, or ``00`` + the registry id."""
        if self.wire_format == "confluent":
            return CONFLUENT_MAGIC + self.schema_id(name).to_bytes(4, "big")
        return MAGIC + self.store.fingerprints[name]

    def encode(self, name: str, record: dict) -> bytes:
        try:
            schema = self.store.readers[name]
        except KeyError:
            raise CodecError(f"no schema named {name!r}; known: {sorted(self.store.readers)}") from None
        buf = io.BytesIO()
        buf.write(self.header(name))
        try:
            fastavro.schemaless_writer(buf, schema, record)
        except (ValueError, TypeError, KeyError, AttributeError, struct.error) as exc:
            raise CodecError(f"record does not fit schema {name}: {exc}") from exc
        return buf.getvalue()

    def decode(self, data: bytes, expect: str | None = None) -> dict:
        """Decode ``data`` (either wire format, told by the first byte); with ``expect``, resolve against
        that reader schema and refuse other types."""
        is_bytes = isinstance(data, (bytes, bytearray, memoryview))
        if is_bytes and len(data) >= HEADER_LEN and data[:2] == MAGIC:
            fp = bytes(data[2:HEADER_LEN])
            writer = self.store.writers.get(fp)
            if writer is None:
                raise UnknownSchemaError(f"unknown writer schema fingerprint {fp.hex()}")
            header_len = HEADER_LEN
        elif is_bytes and len(data) >= CONFLUENT_HEADER_LEN and data[:1] == CONFLUENT_MAGIC:
            writer, header_len = self._confluent_writer(int.from_bytes(data[1:CONFLUENT_HEADER_LEN], "big")), CONFLUENT_HEADER_LEN
        else:
            head = bytes(data[:12]).hex() if is_bytes else type(data).__name__
            raise UnknownSchemaError(f"not an Avro single-object message nor Confluent-framed (starts {head!r})")
        writer_name = writer["name"].split(".")[-1]
        if expect is not None and writer_name != expect:
            raise CodecError(f"expected a {expect} message, got {writer_name}")
        reader = self.store.readers.get(expect or writer_name, writer)
        body = io.BytesIO(data[header_len:])
        try:
            # resolving a schema against itself is pure cost (measured 2x slower decode): skip it
            out = fastavro.schemaless_reader(body, writer, None if reader is writer else reader)
        except Exception as exc:  # fastavro raises many types on truncated/garbage payloads
            raise CodecError(f"malformed {writer_name} payload: {type(exc).__name__}: {exc}") from exc
        rest = len(data) - header_len - body.tell()
        if rest:  # a record followed by bytes it does not account for: corrupt or not what it claims to be
            raise CodecError(f"malformed {writer_name} payload: {rest} trailing bytes after the record")
        return out

    def _confluent_writer(self, schema_id: int) -> Any:
        if self.registry is None:
            raise UnknownSchemaError(f"not decodable as Avro here: starts with the Confluent magic byte 0 (schema id "
                                     f"{schema_id}), but no kafka.schema_registry_url is configured to look the id up")
        writer = self.registry.writer(schema_id)
        if writer is None:
            raise UnknownSchemaError(f"schema id {schema_id} is not in the schema registry {self.registry.url}")
        # the same schema as one of ours: use our parsed copy (identity skips resolution: faster decode)
        return self.store.writers.get(schema_fingerprint(writer), writer)


def _plain_schema(parsed: Any) -> Any:
    """A parsed fastavro schema as plain Avro JSON (fastavro adds '__fastavro_parsed' and friends)."""
    if isinstance(parsed, dict):
        return {k: _plain_schema(v) for k, v in parsed.items() if not k.startswith("__")}
    if isinstance(parsed, list):
        return [_plain_schema(v) for v in parsed]
    return parsed


def subjects_for(cfg) -> dict[str, list[str]]:
    """Registry subjects of each record type (TopicNameStrategy, '<topic>-value'), from the topics it is
    written to. ModelRetired shares the embedding topic with EntityEmbeddings, whose subject holds that
    one type: it goes under TopicRecordNameStrategy '<topic>-<full name>' so compatibility checks of
    either type never see the other."""
    t = cfg.topics
    subjects = {
        "EntityUpdate": [f"{topic}-value" for topic in cfg.update_topics()],
        "StandardizedFeatures": [f"{cfg.standardized_topic(p)}-value" for p in cfg.standardizers.processors],
        "EntityEmbeddings": [f"{t.embeddings}-value"],
        "ModelRetired": [f"{t.embeddings}-nearline.v1.ModelRetired"],
        "DeadLetter": [f"{t.dead_letter}-value"],
    }
    if t.feature_snapshot:
        subjects["FeatureSnapshot"] = [f"{t.feature_snapshot}-value"]
    return subjects


_REGISTRIES: dict[tuple, RegistrySchemas] = {}


def codec_for(cfg, *, retry_forever: bool = False) -> Codec:
    """The codec the config asks for (``kafka.wire_format``, ``kafka.schema_registry_*``). With
    'confluent' every schema is registered now, so the ids are cached before the first message (and
    travel with pickled codecs); one registry cache is shared by every codec of the process.
    ``retry_forever`` (the job, the standardizers): a registry outage is waited out with backoff (logged,
    stoppable, input uncommitted) instead of raising after ``kafka.schema_registry_retry_s``."""
    k = cfg.kafka
    registry = None
    if k.schema_registry_url:
        retry_s = None if retry_forever else k.schema_registry_retry_s
        key = (k.schema_registry_url, k.schema_registry_username, retry_s)
        registry = _REGISTRIES.get(key)
        if registry is None:
            registry = _REGISTRIES[key] = RegistrySchemas(k.schema_registry_url, k.schema_registry_username,
                                                          k.schema_registry_password, retry_s)
    codec = Codec(wire_format=k.wire_format, registry=registry, subjects=subjects_for(cfg))
    if k.wire_format == "confluent":
        codec.register_all()
    return codec


_DEFAULT: SchemaStore | None = None


def default_store() -> SchemaStore:
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = SchemaStore.from_dir()
    return _DEFAULT
