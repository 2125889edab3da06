"""Wake-ups for requests waiting on a job in this process.

The worker calls ``notify`` when it ends a job, so a ``POST /v1/studies?wait=`` answers as soon as the findings
are published instead of at its next poll of the job store (0.2 s apart: up to a third of a radiograph's
request time). Waiters still poll the store: a job may be run by another process sharing it.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class JobSignals:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiting: dict[str, list[tuple[asyncio.AbstractEventLoop, asyncio.Event]]] = {}

    @contextmanager
    def watch(self, job_id: str) -> Iterator[asyncio.Event]:
        """An event of the running event loop, set when ``notify(job_id)`` is called while the block runs."""
        entry = (asyncio.get_running_loop(), asyncio.Event())
        with self._lock:
            self._waiting.setdefault(job_id, []).append(entry)
        try:
            yield entry[1]
        finally:
            with self._lock:
                entries = self._waiting.get(job_id, [])
                entries.remove(entry)
                if not entries:
                    self._waiting.pop(job_id, None)

    def notify(self, job_id: str) -> None:
        """Wake every waiter of ``job_id`` (callable from any thread)."""
        with self._lock:
            entries = list(self._waiting.get(job_id, ()))
        for loop, event in entries:
            try:
                loop.call_soon_threadsafe(event.set)
            except RuntimeError:  # that request's event loop has closed: nobody is waiting any more
                continue
