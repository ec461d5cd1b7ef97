"""The memory of refused credentials: fed by kafka-python's own log records (the exception objects it logs),
cleared, aged out; and the version-pinned patch installed on the pinned kafka-python."""

import logging

import kafka
from kafka.errors import KafkaConnectionError, SaslAuthenticationFailedError
from kafka.net.connection import KafkaConnection

from nearline.io import kafka_client_fixes as fixes
from nearline.io import kafka_io  # noqa: F401  (importing the Kafka edge installs the fix and the recorder)


def test_the_fix_is_installed_on_the_pinned_version():
    assert kafka.__version__ == fixes.PATCHED_FOR
    assert KafkaConnection.connection_lost.__name__ == "connection_lost"
    assert KafkaConnection.connection_lost.__qualname__.startswith("connection_lost_naming_a_close_during_sasl")


def test_a_logged_refusal_is_remembered_and_named_once():
    fixes.AUTH_FAILURES.clear()
    assert fixes.refused_credentials_hint() == ""
    conn_log = logging.getLogger("kafka.net.connection")
    conn_log.error("%s: Connection lost: %s", "<conn>", KafkaConnectionError("socket disconnected"))
    assert fixes.refused_credentials_hint() == ""  # a plain disconnect is not a refusal
    exc = SaslAuthenticationFailedError("SaslAuthenticationFailedError: Authentication failed during "
                                        "authentication due to invalid credentials with SASL mechanism SCRAM-SHA-256")
    conn_log.error("%s: Connection lost: %s", "<conn>", exc)
    hint = fixes.refused_credentials_hint()
    assert hint == ("the broker refused the credentials (SaslAuthenticationFailedError: Authentication failed "
                    "during authentication due to invalid credentials with SASL mechanism SCRAM-SHA-256)")
    assert fixes.AUTH_FAILURES.last(within_s=0.0) is None  # an old refusal is not offered as today's reason
    fixes.AUTH_FAILURES.clear()
    assert fixes.refused_credentials_hint() == ""


def test_muted_logs_still_record_the_refusal_and_print_nothing(capsys):
    fixes.AUTH_FAILURES.clear()
    with fixes.muted_kafka_logs():
        logging.getLogger("kafka.net.manager").error("Connection failed: %s", SaslAuthenticationFailedError("no"))
        logging.getLogger("kafka.net.transport").error("Abort (%s)", KafkaConnectionError("socket disconnected"))
    assert isinstance(fixes.AUTH_FAILURES.last(), SaslAuthenticationFailedError)
    assert capsys.readouterr().err == ""
    assert logging.getLogger("kafka.net.manager").filters == []
    fixes.AUTH_FAILURES.clear()
