"""Building DeadLetter records: the original bytes, where they came from, and why they were refused.

A dead letter must never be the reason a pipeline stops: it always fits the producer's request size.
An original (or key) longer than ``max_original`` bytes is truncated to its first ``max_original``
bytes and the error says so; topic/partition/offset still point at the full message. If even that
record is refused by the broker, :func:`reference_only` drops the original altogether.
"""

from __future__ import annotations

import time

from nearline.io.codec import Codec

DEFAULT_MAX_ORIGINAL = 65_536
MAX_ERROR_CHARS = 4000


def dead_letter_record(*, original: bytes, key: bytes | None, topic: str, partition: int, offset: int,
                       stage: str, error: str, max_original: int = DEFAULT_MAX_ORIGINAL) -> dict:
    original = bytes(original or b"")
    notes = []
    if len(original) > max_original:
        notes.append(f"original truncated to its first {max_original} of {len(original)} bytes; "
                     f"the full message is {topic}[{partition}]@{offset}")
        original = original[:max_original]
    if key is not None and len(key) > max_original:
        notes.append(f"key truncated to its first {max_original} of {len(key)} bytes")
        key = bytes(key[:max_original])
    text = error[:MAX_ERROR_CHARS] + "".join(f" [{n}]" for n in notes)
    return {"original": original, "key": None if key is None else bytes(key), "topic": topic,
            "partition": int(partition), "offset": int(offset), "stage": stage, "error": text,
            "time": int(time.time() * 1000)}


def encode_dead_letter(codec: Codec, **kw) -> bytes:
    return codec.encode("DeadLetter", dead_letter_record(**kw))


def reference_only(codec: Codec, record: bytes, why: str) -> bytes:
    """The same dead letter without its original and key (a reference by topic/partition/offset),
    for when the broker refused the record itself (``why``)."""
    d = codec.decode(record, expect="DeadLetter")
    d["error"] = (d["error"] + f" [original omitted: the dead letter was refused ({why[:300]}); "
                  f"the full message is {d['topic']}[{d['partition']}]@{d['offset']}]")
    d["original"], d["key"] = b"", None
    return codec.encode("DeadLetter", d)
