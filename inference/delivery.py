"""Deliver a job's DICOM results (SEG, SR, Secondary Capture) to the configured destinations.

One background thread works through a schedule of (job, destination) attempts. A failed attempt is retried after
``base_delay_s * 2**(attempt-1)`` seconds (capped at ``max_delay_s``) until ``max_attempts``; an answer that a
retry cannot change (HTTP 401/403/4xx) fails at once. Each retry re-sends only the instances the destination has
not confirmed yet, with their original SOP Instance UIDs, so a PACS that already has one keeps a single copy
(Orthanc and most archives ignore or overwrite a known SOP Instance UID; the tests check this against Orthanc).

The status of every destination is passed to ``record(job_id, status)`` after each change (in the server:
``JobStore.set_delivery``), shaped ``{destination name: {"state": "pending" | "delivered" | "failed",
"attempts": n, "instances": n, "error": str | None, "updated_at": iso-8601}}``; names never contain passwords.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pydicom.filereader

from dicom_io.network.destinations import Destination, DicomWebDestination
from dicom_io.network.dicomweb import stow_instances
from dicom_io.network.scu import send_instances
from dicom_io.reader import is_part10

log = logging.getLogger(__name__)

class Unconfirmed(ConnectionError):
    """The destination answered but did not confirm every instance."""


Record = Callable[[str, dict[str, Any]], None]
_DIMSE_OK = {0x0000, 0xB000, 0xB006, 0xB007}


def dicom_files(folder: Path) -> list[Path]:
    """DICOM Part 10 files directly in ``folder`` (by their 'DICM' marker), sorted by name; none when ``folder``
    does not exist (a job without results)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return [path for path in sorted(folder.iterdir()) if path.is_file() and is_part10(path)]


@dataclass
class _Target:
    destination: Destination
    files: dict[str, Path]  # SOP Instance UID -> file
    confirmed: set[str] = field(default_factory=set)
    state: str = "pending"
    attempts: int = 0
    error: str | None = None
    updated_at: str = ""

    def public(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "attempts": self.attempts,
            "instances": len(self.files),
            "error": self.error,
            "updated_at": self.updated_at,
        }


class Delivery:
    """``enqueue(job_id, files)`` schedules delivery to every destination; ``start``/``stop`` run the thread."""

    def __init__(
        self,
        destinations: list[Destination],
        record: Record,
        *,
        calling_ae: str = "RADINFER",
        max_attempts: int = 8,
        base_delay_s: float = 5.0,
        max_delay_s: float = 600.0,
        timeout_s: float = 60.0,
    ) -> None:
        self.destinations = list(destinations)
        self.record = record
        self.calling_ae = calling_ae
        self.max_attempts = max_attempts
        self.base_delay_s = base_delay_s
        self.max_delay_s = max_delay_s
        self.timeout_s = timeout_s
        self._jobs: dict[str, dict[str, _Target]] = {}
        self._schedule: list[tuple[float, int, str, str]] = []
        self._sequence = itertools.count()
        self._cv = threading.Condition()
        self._busy = False
        self._stopping = False
        self._thread: threading.Thread | None = None

    # -- lifecycle -----------------------------------------------------------------------------------

    def start(self) -> None:
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="radinfer-delivery", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=self.timeout_s + 5)
            self._thread = None

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait until nothing is scheduled or running (every delivery delivered or failed)."""
        deadline = time.monotonic() + timeout_s
        with self._cv:
            while self._schedule or self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cv.wait(left)
        return True

    # -- requests ------------------------------------------------------------------------------------

    def enqueue(self, job_id: str, files: list[Path], previous: dict[str, Any] | None = None) -> dict[str, Any]:
        """Schedule delivery of ``files`` (a job's DICOM outputs); destinations already ``delivered`` in
        ``previous`` (a status recorded before a restart) are skipped. Returns the initial status."""
        by_uid = {str(pydicom.filereader.read_file_meta_info(p).MediaStorageSOPInstanceUID): Path(p) for p in files}
        targets = {}
        for destination in self.destinations:
            target = _Target(destination, by_uid)
            before = (previous or {}).get(destination.name) or {}
            if before.get("state") == "delivered":
                target.state, target.attempts = "delivered", int(before.get("attempts", 0))
            target.updated_at = _now()
            targets[destination.name] = target
        with self._cv:
            self._jobs[job_id] = targets
            for name, target in targets.items():
                if target.state == "pending":
                    heapq.heappush(self._schedule, (time.monotonic(), next(self._sequence), job_id, name))
            self._cv.notify_all()
        status = self._status(job_id)
        self.record(job_id, status)
        return status

    def _status(self, job_id: str) -> dict[str, Any]:
        return {name: target.public() for name, target in self._jobs[job_id].items()}

    # -- the worker ----------------------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._stopping and (not self._schedule or self._schedule[0][0] > time.monotonic()):
                    self._cv.wait(None if not self._schedule else self._schedule[0][0] - time.monotonic())
                if self._stopping:
                    return
                _due, _seq, job_id, name = heapq.heappop(self._schedule)
                target = self._jobs[job_id][name]
                self._busy = True
            try:
                self._attempt(job_id, target)
            finally:
                with self._cv:
                    self._busy = False
                    self._cv.notify_all()

    def _attempt(self, job_id: str, target: _Target) -> None:
        target.attempts += 1
        retry = True
        try:
            self._send(target)
        except (ConnectionError, OSError, ValueError) as exc:  # DicomWebError, DimseError, Unconfirmed, I/O
            retry = getattr(exc, "retryable", True)
            target.error = str(exc)
        else:
            target.error = None
        if target.error is None:
            target.state = "delivered"
            log.info("job %s: results delivered to %s (attempt %d)", job_id, target.destination.name, target.attempts)
        elif not retry or target.attempts >= self.max_attempts:
            target.state = "failed"
            log.error("job %s: delivery to %s failed for good: %s", job_id, target.destination.name, target.error)
        else:
            delay = min(self.max_delay_s, self.base_delay_s * 2 ** (target.attempts - 1))
            log.warning(
                "job %s: delivery to %s failed (attempt %d), retrying in %.1f s: %s",
                job_id, target.destination.name, target.attempts, delay, target.error,
            )
            with self._cv:
                heapq.heappush(self._schedule, (time.monotonic() + delay, next(self._sequence), job_id, target.destination.name))
        target.updated_at = _now()
        self.record(job_id, self._status(job_id))

    def _send(self, target: _Target) -> None:
        """Send what the destination has not confirmed; raise if anything is still unconfirmed afterwards."""
        todo = {uid: path for uid, path in target.files.items() if uid not in target.confirmed}
        if not todo:
            return
        destination = target.destination
        if isinstance(destination, DicomWebDestination):
            result = stow_instances(destination, list(todo.values()), timeout_s=self.timeout_s)
            target.confirmed |= result.stored & todo.keys()
            refused = {f"0x{code:04X}" for uid, code in result.failed.items() if uid in todo}
        else:
            statuses = send_instances(
                list(todo.values()), destination, calling_ae=self.calling_ae, timeout_s=self.timeout_s
            )
            target.confirmed |= {uid for uid, code in statuses.items() if code in _DIMSE_OK and uid in todo}
            refused = {f"0x{code:04X}" for uid, code in statuses.items() if code not in _DIMSE_OK}
        left = len(todo.keys() - target.confirmed)
        if left:
            reasons = f" (status {', '.join(sorted(refused))})" if refused else ""
            raise Unconfirmed(f"{destination.name} did not confirm {left} of {len(todo)} instance(s){reasons}")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
