"""A version-pinned fix for kafka-python 3.0.12, and the memory of the last credentials a broker refused.

* **A refusal that arrives as a close.** A broker that refuses SASL credentials buffers its answer
  (``invalid credentials with SASL mechanism ...``) and sends it as it closes the connection, 100 ms later
  (``connection.failed.authentication.delay.ms``). On a loaded machine the close often arrives without the
  answer: kafka-python then logs only ``socket disconnected`` and retries until the bootstrap times out, so
  a wrong password looks exactly like an unreachable broker. Seen in CI (the SASL test failed there and
  passed on a quiet machine); reproduced here with four busy loops: 0 of 6 probes with a wrong password saw
  the answer, against 2 to 4 of 6 on a quiet machine. (Handing the bytes read with the close to the protocol
  first made no difference, 0 of 6 again: the answer does not reach the client.) The fix: a connection closed in the
  middle of the SASL exchange fails as ``SaslAuthenticationFailedError`` saying so, which kafka-python
  treats, and logs, as the authentication failure it almost always is.

* **Which credentials were refused.** kafka-python logs an authentication failure and retries; the caller
  only sees ``KafkaTimeoutError: Unable to bootstrap`` when its time is up. :class:`AuthFailureRecorder`
  keeps the last refusal this process saw (from the exception object kafka-python logs, not its text), so
  the CLI's one-line error can say "the broker refused the SASL credentials" instead of "unreachable".

Applied only to the exact kafka-python version it was written against; another version logs a warning and
runs unpatched (re-check ``kafka/net/connection.py`` before bumping the pin in pyproject.toml).
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time

log = logging.getLogger(__name__)

PATCHED_FOR = "3.0.12"
# a refusal older than this is not offered as the reason of a bootstrap time-out (bootstraps time out in
# seconds to a minute here: kafka.request_timeout_ms, ensure_topics' timeout_s)
RECENT_S = 120.0
_applied = False


def _closed_during_sasl(conn, exc):
    import kafka.errors as Errors

    return Errors.SaslAuthenticationFailedError(
        f"the broker closed the connection during SASL {conn.config['sasl_mechanism']} authentication without "
        f"an answer ({exc}): it does so when it refuses the credentials and its answer is lost with the close")


def sasl_authenticate_marked(original):
    """Wraps ``KafkaConnection._sasl_authenticate`` to mark the connection while its SASL exchange runs."""

    async def _sasl_authenticate(self, timeout_at=None):
        self._nearline_in_sasl = True
        try:
            return await original(self, timeout_at)
        finally:
            self._nearline_in_sasl = False

    return _sasl_authenticate


def connection_lost_naming_a_close_during_sasl(original):
    """Wraps ``KafkaConnection.connection_lost``: a connection lost (not closed by us) during its SASL exchange
    fails as SaslAuthenticationFailedError, saying it was closed and not answered, instead of as a bare
    KafkaConnectionError. (The connection's start-up future is failed here, before the SASL coroutine itself
    sees the error, so this is the one place to name it.)"""
    import kafka.errors as Errors

    def connection_lost(self, exc):
        if getattr(self, "_nearline_in_sasl", False) and isinstance(exc, Errors.KafkaConnectionError):
            exc = _closed_during_sasl(self, exc)
        return original(self, exc)

    return connection_lost


def apply() -> bool:
    """Install the fix (idempotent); False when the installed kafka-python is not the one it was written for."""
    global _applied
    import kafka
    from kafka.net import connection

    if _applied:
        return True
    if kafka.__version__ != PATCHED_FOR:
        log.warning("kafka-python %s is not %s: a SASL exchange the broker closes is NOT reported as a refusal "
                    "(a wrong password may show as an unreachable broker)",
                    kafka.__version__, PATCHED_FOR)
        return False
    conn_cls = connection.KafkaConnection
    conn_cls._sasl_authenticate = sasl_authenticate_marked(conn_cls._sasl_authenticate)
    conn_cls.connection_lost = connection_lost_naming_a_close_during_sasl(conn_cls.connection_lost)
    _applied = True
    return True


class AuthFailureRecorder(logging.Handler):
    """Remembers the last authentication or authorization failure kafka-python logged in this process."""

    def __init__(self):
        super().__init__(level=logging.DEBUG)
        self._lock_last = threading.Lock()
        self._last: Exception | None = None
        self._at = 0.0

    def emit(self, record: logging.LogRecord) -> None:
        from kafka.errors import AuthorizationError, SaslAuthenticationFailedError

        for arg in record.args if isinstance(record.args, tuple) else ():
            if isinstance(arg, (SaslAuthenticationFailedError, AuthorizationError)):
                with self._lock_last:
                    self._last, self._at = arg, time.monotonic()

    def last(self, within_s: float = RECENT_S) -> Exception | None:
        """The last refusal if it came in the last ``within_s`` seconds (an old one says nothing about a
        bootstrap that just timed out: the credentials may have been fixed since)."""
        with self._lock_last:
            return self._last if self._last is not None and time.monotonic() - self._at <= within_s else None

    def clear(self) -> None:
        with self._lock_last:
            self._last = None


AUTH_FAILURES = AuthFailureRecorder()


# where kafka-python 3.0.12 logs a refused authentication, with the exception as an argument, at ERROR:
# "<conn>: Connection lost: <exc>" (connection), "Connection failed: <exc>" (manager), "Abort (<exc>)" (transport)
AUTH_LOGGERS = ("kafka.net.connection", "kafka.net.manager", "kafka.net.transport")


def install_auth_failure_recorder() -> None:
    """Attach the recorder to the loggers that report a refusal (once). They log it at ERROR, which every
    level this project sets lets through; the records still reach the other handlers only through their own
    filters (nearline.core.logs)."""
    for name in AUTH_LOGGERS:
        logger = logging.getLogger(name)
        if AUTH_FAILURES not in logger.handlers:
            logger.addHandler(AUTH_FAILURES)


class _RecordAndDrop(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        AUTH_FAILURES.emit(record)
        return False


@contextlib.contextmanager
def muted_kafka_logs():
    """kafka-python silent for the duration (a probe of a dead broker logs a dozen connection errors; the
    caller reports the outcome in one line), while its authentication failures are still recorded."""
    kafka_log, watched = logging.getLogger("kafka"), [logging.getLogger(n) for n in AUTH_LOGGERS]
    drop = _RecordAndDrop()
    with _MUTE_LOCK:
        old_kafka, old_levels = kafka_log.level, [lg.level for lg in watched]
        kafka_log.setLevel(logging.CRITICAL)
        for lg in watched:
            lg.setLevel(logging.ERROR)
            lg.addFilter(drop)
        try:
            yield
        finally:
            for lg, level in zip(watched, old_levels):
                lg.removeFilter(drop)
                lg.setLevel(level)
            kafka_log.setLevel(old_kafka)


_MUTE_LOCK = threading.Lock()


def refused_credentials_hint() -> str:
    """'' or the broker's refusal, for an error message about a bootstrap that timed out."""
    exc = AUTH_FAILURES.last()
    if exc is None:
        return ""
    # kafka-python's text repeats the class: "[Error 58] SaslAuthenticationFailedError: SaslAuthentication..."
    text = re.sub(r"^(\[Error -?\d+\] )?(\w+Error: )+", "", str(exc))
    return f"the broker refused the credentials ({type(exc).__name__}: {text})"
