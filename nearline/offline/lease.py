"""Leases on a model version's backfill, so that one process (job or CLI) runs it at a time.
"""

from __future__ import annotations

import json
import logging
import threading
import time

log = logging.getLogger(__name__)
LEASE_S = 60


def lease_key(prefix: str, model_key: str) -> str:
    return f"{prefix}:backfill:lease:{model_key}"


def claim(r, prefix: str, model_key: str, owner: str) -> bool:
    """Record the request (durable) and take the lease if nobody holds it. True: the caller runs it."""
    from nearline.offline.progress import requests_key

    r.hset(requests_key(prefix), model_key, json.dumps({"at": time.time(), "by": owner}))
    return bool(r.set(lease_key(prefix, model_key), owner, nx=True, ex=LEASE_S))


class LeaseKeeper:
    """Keeps the leases of the versions a backfill is running for, until stopped."""

    def __init__(self, r, prefix: str, keys: list[str], owner: str):
        self.r, self.prefix, self.keys, self.owner = r, prefix, keys, owner
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="backfill-lease")

    def _refresh(self):
        for k in self.keys:
            self.r.set(lease_key(self.prefix, k), self.owner, ex=LEASE_S)

    def _loop(self):
        while not self._stop.wait(LEASE_S / 4):
            try:
                self._refresh()
            except Exception as exc:  # Redis blip: the next refresh retries; the lease outlives a few misses
                log.warning("backfill lease refresh failed: %s", exc)

    def __enter__(self):
        self._refresh()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=5)
        for k in self.keys:
            self.r.delete(lease_key(self.prefix, k))
