"""Logging set-up: JSON lines on request, Beam's known start-up noise filtered unless --verbose."""

import io
import json
import logging

import pytest

from nearline.core import logs


@pytest.fixture
def restore_logging():
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    yield
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in saved[0]:
        root.addHandler(h)
    root.setLevel(saved[1])


def test_json_lines_carry_level_logger_message_and_traceback(restore_logging):
    out = io.StringIO()
    logs.setup(fmt="json", stream=out)
    logging.getLogger("nearline.test").info("read %d records", 3)
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("nearline.test").exception("failed")
    first, second = [json.loads(line) for line in out.getvalue().splitlines()]
    assert first["level"] == "INFO" and first["logger"] == "nearline.test" and first["message"] == "read 3 records"
    assert "time" in first
    assert second["level"] == "ERROR" and "ValueError: boom" in second["exc_info"]


def test_beam_startup_noise_filtered_unless_verbose(restore_logging):
    noise = ("Key coder FastPrimitivesCoder for transform <ParDo(PTransform) label=[StandardizationJoin]> "
             "with stateful DoFn may not be deterministic.")
    for verbose, expect_noise in ((False, False), (True, True)):
        out = io.StringIO()
        logs.setup(verbose=verbose, stream=out)
        logging.getLogger("apache_beam.transforms.core").warning(noise)
        logging.getLogger().warning("apitools not found, and bigquery client libraries are not available")
        logging.getLogger("kafka.net.selector").warning(
            "Task <kafka.net.selector.Task object at 0x7f> ran for 0.171s (>0.100s threshold). It is blocking the "
            "event loop -- likely a tight sync loop inside a coroutine. Other pollers will time out.")
        logging.getLogger("apache_beam.transforms.core").warning("a real Beam warning")
        text = out.getvalue()
        assert ("may not be deterministic" in text) is expect_noise
        assert ("apitools" in text) is expect_noise
        assert ("blocking the event loop" in text) is expect_noise
        assert "a real Beam warning" in text  # only the listed, explained messages are dropped


def test_unknown_format_is_an_error(restore_logging):
    with pytest.raises(ValueError, match="log format"):
        logs.setup(fmt="xml")


def test_kafka_outage_chatter_is_dropped_but_authentication_failures_are_kept():
    import io
    import logging

    from nearline.core import logs

    out = io.StringIO()
    logs.setup(stream=out)
    k = logging.getLogger("kafka.net.manager")
    k.error("Connection failed: KafkaConnectionError: 111 ECONNREFUSED")
    k.error("<KafkaConnection node_id=1>: SaslAuthenticationFailedError: invalid credentials with SASL mechanism SCRAM-SHA-256")
    k.warning("Bootstrap connection to bootstrap-0 failed")
    text = out.getvalue()
    assert "ECONNREFUSED" not in text and "Bootstrap connection" not in text
    assert "SaslAuthenticationFailedError" in text
    logs.setup(verbose=True, stream=out)
    k.error("Connection failed: KafkaConnectionError: 111 ECONNREFUSED")
    assert "ECONNREFUSED" in out.getvalue()  # everything with -v
    logs.setup()
