"""Dead letters always fit: a too-large original (or key) is truncated and the record says where the
full message is; a refused dead letter can be re-sent as a reference without its original."""

from nearline.io.codec import Codec
from nearline.io.deadletter import encode_dead_letter, reference_only

C = Codec()


def test_small_original_is_kept_whole():
    d = C.decode(encode_dead_letter(C, original=b"abc", key=b"k", topic="t", partition=1, offset=7,
                                    stage="s", error="undecodable: x"), expect="DeadLetter")
    assert d["original"] == b"abc" and d["key"] == b"k" and d["error"] == "undecodable: x"


def test_large_original_and_key_are_truncated_and_the_error_says_so():
    big = bytes(range(256)) * 4096  # 1 MiB
    enc = encode_dead_letter(C, original=big, key=b"K" * 200_000, topic="entity-updates", partition=2, offset=99,
                             stage="standardize.title", error="oversize: 1048576 bytes", max_original=1000)
    assert len(enc) < 4000
    d = C.decode(enc, expect="DeadLetter")
    assert d["original"] == big[:1000] and d["key"] == b"K" * 1000
    assert "truncated to its first 1000 of 1048576 bytes" in d["error"] and "entity-updates[2]@99" in d["error"]
    assert d["error"].startswith("oversize: ")


def test_reference_only_drops_original_and_key_keeps_where_and_why():
    enc = encode_dead_letter(C, original=b"x" * 5000, key=b"k", topic="t", partition=0, offset=3, stage="s",
                             error="bad_ids: y")
    d = C.decode(reference_only(C, enc, "MessageSizeTooLargeError"), expect="DeadLetter")
    assert d["original"] == b"" and d["key"] is None and (d["topic"], d["partition"], d["offset"]) == ("t", 0, 3)
    assert d["error"].startswith("bad_ids: y") and "MessageSizeTooLargeError" in d["error"] and "t[0]@3" in d["error"]
