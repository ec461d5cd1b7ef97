"""Failure classification: permanent errors are raised at once, transient ones retried with backoff."""

import logging

import pytest
import redis
from kafka import errors as kerr

from nearline.core.lifecycle import PermanentError, is_permanent, retry_until_done
from nearline.io.codec import CodecError

log = logging.getLogger("test")


@pytest.mark.parametrize("exc, permanent", [
    (kerr.MessageSizeTooLargeError("1 MB"), True),
    (kerr.RecordListTooLargeError(), True),
    (kerr.InvalidRecordError(), True),
    (CodecError("does not fit"), True),
    (PermanentError("x"), True),
    (TypeError("not bytes"), True),
    (kerr.KafkaTimeoutError(), False),
    (kerr.NotLeaderForPartitionError(), False),
    (kerr.CommitFailedError(), False),
    (kerr.KafkaConnectionError(), False),
    (redis.ConnectionError(), False),
    (redis.TimeoutError(), False),
    (ConnectionRefusedError(), False),
    (RuntimeError("unknown"), False),
])
def test_classification(exc, permanent):
    assert is_permanent(exc) is permanent


def test_permanent_is_raised_at_once_transient_retried():
    calls = []

    def permanent():
        calls.append(1)
        raise kerr.MessageSizeTooLargeError("too big")

    with pytest.raises(kerr.MessageSizeTooLargeError):
        retry_until_done("send", permanent, log, first_delay=0.001)
    assert len(calls) == 1

    n = iter(range(10))

    def flaky():
        if next(n) < 3:
            raise kerr.KafkaTimeoutError()
        return "ok"

    assert retry_until_done("send", flaky, log, first_delay=0.001) == "ok"
    with pytest.raises(kerr.KafkaTimeoutError):
        retry_until_done("send", lambda: (_ for _ in ()).throw(kerr.KafkaTimeoutError()), log, first_delay=0.001,
                         max_tries=3)
