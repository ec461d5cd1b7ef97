"""What a message must satisfy before any expensive work is done on it, and the reasons it is refused.

Every refused message becomes a dead letter whose ``error`` starts with one of the reason codes below
(``"<reason>: <what is wrong>"``), and each reason has its own counter (``dead_letters_<reason>``), so
an operator sees *why* input is refused, not only how much. The checks are ordered cheapest first and
all run before decoding (size), before standardizing (raw field sizes) and before the join (keys,
versions, ids, weights), so a flood of bad input costs about as much as reading it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

INT64_MAX = 2**63 - 1
VERSION_MIN, VERSION_MAX = 0, INT64_MAX
"""The valid range of an update version: a non-negative Avro long. Redis compares versions exactly
(as decimal strings, nearline/io/store.py), so every value in the range keeps its order end to end."""

REASONS = {
    "oversize": "message larger than limits.max_message_bytes (refused before decoding)",
    "undecodable": "not a known Avro single-object message, or a malformed payload",
    "unknown_entity_type": "entity_type not in entity_types",
    "bad_key": "message key missing or not '<entity_type>:<entity_id>' of its payload",
    "wrong_partition": "key does not hash to the partition the message was read from (co-partitioning)",
    "bad_entity_id": "entity_id empty or longer than limits.max_entity_id_chars",
    "bad_version": "version outside [0, 2**63-1]",
    "bad_raw_fields": "too many raw fields, or a raw field longer than limits.max_field_chars",
    "unknown_processor": "processor unknown, or not the processor of the topic it was read from",
    "unknown_feature": "a feature its processor does not produce",
    "bad_ids": "taxonomy ids negative, beyond int64, or more than limits.max_ids_per_feature",
    "bad_weights": "weights non-finite, beyond limits.max_abs_weight, or not one per id",
    "standardize_failed": "a standardizer could not standardize the update",
    "features_without_update": "standardized features whose EntityUpdate never arrived within the join timeout",
    "join_timeout": "join timed out under timeout_policy dead_letter",
    "standardizer_refused": "a standardizer refused the version (its own dead letter says why), under timeout_policy dead_letter",
    "replay_incomplete": "a join re-read after a restart did not complete",
    "features_do_not_fit": "features do not fit a registered model's manifest",
    "model_failed": "a registered model failed when run on the entity",
    "non_finite_embedding": "a model produced a NaN or infinite embedding",
    "publish_refused": "the broker permanently refused the output record (e.g. too large)",
}


class Rejected(ValueError):
    """A message refused for ``reason`` (a key of REASONS); str() is ``"<reason>: <detail>"``."""

    def __init__(self, reason: str, detail: str):
        assert reason in REASONS, reason
        self.reason, self.detail = reason, detail
        super().__init__(f"{reason}: {detail}")


def reason_of(error: str) -> str:
    """The reason code a dead letter's error text starts with ('other' if none)."""
    head = error.split(":", 1)[0]
    return head if head in REASONS else "other"


@dataclass(frozen=True)
class Limits:
    """The numbers the checks use (from nearline.config.LimitsConfig)."""

    max_message_bytes: int = 65_536
    max_key_bytes: int = 512
    max_entity_id_chars: int = 256
    max_fields: int = 64
    max_field_chars: int = 4096
    max_ids_per_feature: int = 1024
    max_abs_weight: float = 1000.0

    @classmethod
    def from_config(cls, cfg) -> "Limits":
        lc = getattr(cfg, "limits", None)
        if lc is None:
            return cls()
        return cls(**{k: getattr(lc, k) for k in cls.__dataclass_fields__ if hasattr(lc, k)})


def check_size(value, limits: Limits) -> None:
    n = len(value) if value is not None else 0
    if n > limits.max_message_bytes:
        raise Rejected("oversize", f"message is {n} bytes, limits.max_message_bytes is {limits.max_message_bytes}")


def check_version(version) -> None:
    if isinstance(version, bool) or not isinstance(version, int) or not VERSION_MIN <= version <= VERSION_MAX:
        raise Rejected("bad_version", f"version {version!r} is outside [{VERSION_MIN}, 2**63-1]")


def check_identity(msg: dict, limits: Limits) -> None:
    eid = msg.get("entity_id")
    if not isinstance(eid, str) or not eid or len(eid) > limits.max_entity_id_chars:
        shown = eid[:40] + "..." if isinstance(eid, str) and len(eid) > 40 else eid
        raise Rejected("bad_entity_id", f"entity_id {shown!r} must be 1..{limits.max_entity_id_chars} characters")
    check_version(msg.get("version"))


def check_raw_fields(fields: dict, limits: Limits) -> None:
    """EntityUpdate raw text fields: bounded count and length (fuzzy matching cost grows with length)."""
    if len(fields) > limits.max_fields:
        raise Rejected("bad_raw_fields", f"{len(fields)} raw fields, limits.max_fields is {limits.max_fields}")
    for name, text in fields.items():
        if len(text) > limits.max_field_chars:
            raise Rejected("bad_raw_fields", f"raw field {name!r} has {len(text)} characters, "
                                             f"limits.max_field_chars is {limits.max_field_chars}")


def check_update(upd: dict, limits: Limits) -> None:
    check_identity(upd, limits)
    check_raw_fields(upd.get("fields") or {}, limits)


def expected_key(msg: dict) -> bytes:
    return f"{msg['entity_type']}:{msg['entity_id']}".encode()


def check_key(key: bytes | None, msg: dict, partition: int | None = None, partitions: int | None = None) -> None:
    """The key must be '<type>:<id>' of the payload, and (given the partition count) hash to the
    partition it was read from with Kafka's default partitioner: otherwise the entity's messages are
    not co-partitioned and its join could never complete."""
    want = expected_key(msg)
    if key is None:
        raise Rejected("bad_key", f"message has no key; expected {want.decode()!r}")
    if bytes(key) != want:
        shown = bytes(key[:80])
        raise Rejected("bad_key", f"key {shown!r} does not match the payload's entity {want.decode()!r}")
    if partition is not None and partitions:
        from kafka.partitioner.default import murmur2

        right = (murmur2(want) & 0x7FFFFFFF) % partitions
        if right != partition:
            raise Rejected("wrong_partition", f"key {want.decode()!r} belongs to partition {right} of {partitions}, "
                                              f"read from partition {partition}")


def check_features(feats: dict, limits: Limits, *, processor: str | None = None,
                   known_features: dict[str, set[str]] | None = None) -> None:
    """StandardizedFeatures: the processor is the topic's, every feature is one it produces, ids are
    int64 and non-negative, weights are finite, within +-max_abs_weight and one per id."""
    check_identity(feats, limits)
    proc = feats.get("processor")
    if processor is not None and proc != processor:
        raise Rejected("unknown_processor", f"processor {proc!r} on the topic of processor {processor!r}")
    if known_features is not None:
        if proc not in known_features:
            raise Rejected("unknown_processor", f"processor {proc!r} is not one of {sorted(known_features)}")
        unknown = sorted(set(feats.get("features") or {}) - known_features[proc])
        if unknown:
            raise Rejected("unknown_feature", f"processor {proc!r} does not produce feature(s) {unknown}; "
                                              f"it produces {sorted(known_features[proc])}")
    for name, f in (feats.get("features") or {}).items():
        ids, weights = f.get("ids"), f.get("weights")
        if not isinstance(ids, list):
            raise Rejected("bad_ids", f"feature {name}: ids must be a list")
        if len(ids) > limits.max_ids_per_feature:
            raise Rejected("bad_ids", f"feature {name}: {len(ids)} ids, limits.max_ids_per_feature is "
                                      f"{limits.max_ids_per_feature}")
        for t in ids:
            if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t <= INT64_MAX:
                raise Rejected("bad_ids", f"feature {name}: taxonomy id {t!r} is not in [0, 2**63-1]")
        if weights is not None:
            if len(weights) != len(ids):
                raise Rejected("bad_weights", f"feature {name}: {len(weights)} weights for {len(ids)} ids")
            for w in weights:
                if not isinstance(w, (int, float)) or not math.isfinite(w) or abs(w) > limits.max_abs_weight:
                    raise Rejected("bad_weights", f"feature {name}: weight {w!r} is not finite within "
                                                  f"+-{limits.max_abs_weight:g} (limits.max_abs_weight)")
