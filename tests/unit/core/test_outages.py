"""An outage is one WARNING when it starts and one INFO when it ends, whatever the number of retries."""

import logging

import pytest
import redis
from kafka.errors import KafkaConnectionError

from nearline.core import outages
from nearline.core.lifecycle import retry_until_done
from nearline.core.outages import Outages, dependency_of


class Clock:
    t = 100.0

    def __call__(self):
        return self.t


def test_one_warning_per_outage_and_one_info_when_it_ends(caplog):
    clock = Clock()
    o = Outages(clock)
    with caplog.at_level(logging.DEBUG, logger="nearline.outage"):
        for i in range(50):
            o.failed("Redis", "Redis write" if i % 2 else "Redis read", redis.ConnectionError("refused"), 2.0)
        clock.t += 12.5
        o.succeeded("Redis")
        o.succeeded("Redis")  # nothing more to say
    by_level = {lvl: [r.getMessage() for r in caplog.records if r.levelno == lvl]
                for lvl in (logging.WARNING, logging.INFO, logging.DEBUG)}
    assert len(by_level[logging.WARNING]) == 1 and "Redis unavailable (ConnectionError: refused)" in by_level[logging.WARNING][0]
    assert by_level[logging.INFO] == ["Redis back after 12.5s: 50 retries of Redis read, Redis write"]
    assert len(by_level[logging.DEBUG]) == 49
    assert o.down() == {}


def test_the_dependency_is_named_from_the_failure():
    assert dependency_of(KafkaConnectionError("x"), "offset commit") == "Kafka"
    assert dependency_of(redis.TimeoutError("x"), "read") == "Redis"
    assert dependency_of(OSError("x"), "Redis read") == "Redis"
    assert dependency_of(OSError("x"), "something") == "something"


def test_retry_until_done_logs_the_outage_once_and_caps_the_back_off(caplog, monkeypatch):
    sleeps = []
    monkeypatch.setattr("nearline.core.lifecycle.backoff_sleep", sleeps.append)
    monkeypatch.setattr(outages, "OUTAGES", Outages())
    calls = iter([redis.ConnectionError("down")] * 9 + ["ok"])

    def fn():
        x = next(calls)
        if isinstance(x, Exception):
            raise x
        return x

    with caplog.at_level(logging.INFO):
        assert retry_until_done("Redis write", fn, logging.getLogger("t")) == "ok"
    assert max(sleeps) == 2.0 and sleeps[:4] == [0.2, 0.4, 0.8, 1.6]   # capped: back within 2 s of recovery
    lines = [(r.levelname, r.getMessage().split(" (")[0]) for r in caplog.records if r.name in ("nearline.outage", "t")]
    assert lines[0] == ("WARNING", "Redis unavailable") and lines[-1][0] == "INFO" and len(lines) == 2
    with pytest.raises(ValueError):  # a permanent failure is raised at once, no outage
        retry_until_done("encode", lambda: (_ for _ in ()).throw(ValueError("bad")), logging.getLogger("t"))
