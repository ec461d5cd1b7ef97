"""Building DeadLetter records: the original bytes, where they came from, and why they were refused."""

from __future__ import annotations

import time

from nearline.codec import Codec


def dead_letter_record(*, original: bytes, key: bytes | None, topic: str, partition: int, offset: int,
                       stage: str, error: str) -> dict:
    return {"original": bytes(original or b""), "key": key, "topic": topic, "partition": int(partition),
            "offset": int(offset), "stage": stage, "error": error[:4000], "time": int(time.time() * 1000)}


def encode_dead_letter(codec: Codec, **kw) -> bytes:
    return codec.encode("DeadLetter", dead_letter_record(**kw))
