"""Deliver a job's DICOM results (SEG, SR, Secondary Capture) to the configured destinations.

One background thread works through a schedule of (job, destination) attempts. A failed attempt is retried after
``base_delay_s * 2**(attempt-1)`` seconds (capped at ``max_delay_s``) until ``max_attempts``; an answer that a
retry cannot change (HTTP 401/403/4xx) fails at once. Each retry re-sends only the instances the destination has
not confirmed yet, with their original SOP Instance UIDs, so a PACS that already has one keeps a single copy
(Orthanc and most archives ignore or overwrite a known SOP Instance UID; the tests check this against Orthanc).
``redeliver`` (an operator's request) checks and schedules in one step under the schedule's lock, so concurrent
requests send once; ``cancel`` forgets a deleted job. ``alive``/``revive`` let the owner watch the thread.

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
from inference import metrics
from inference.errors import JobNotFoundError, JobStateError, frame_locations

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
    """``enqueue(job_id, files)`` schedules delivery to every destination; ``start``/``stop`` run the thread.

    One attempt's failure of any kind never stops the thread: an unexpected error counts as a failed attempt (its
    type and code location are logged, never its message, which may quote dataset values), and a job deleted
    meanwhile (``record`` raises JobNotFoundError) has its delivery cancelled.
    """

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
        self.unexpected_errors = 0
        self._jobs: dict[str, dict[str, _Target]] = {}  # jobs with a destination still pending
        self._schedule: list[tuple[float, int, str, str]] = []
        self._sequence = itertools.count()
        self._cv = threading.Condition()  # reentrant: redeliver holds it around enqueue
        self._sending: str | None = None  # the job of the attempt under way
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

    @property
    def alive(self) -> bool:
        """Whether the delivery thread runs (false before ``start`` and after ``stop``)."""
        return self._thread is not None and self._thread.is_alive()

    def revive(self) -> bool:
        """Start the thread again if it died (it should not: the watchdog of a bug); True when it had to."""
        if self._thread is None or self._thread.is_alive():
            return False
        log.error("delivery: the delivery thread had stopped; starting it again")
        self.start()
        return True

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait until nothing is scheduled or running (every delivery delivered or failed)."""
        deadline = time.monotonic() + timeout_s
        with self._cv:
            while self._schedule or self._sending is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cv.wait(left)
        return True

    # -- requests ------------------------------------------------------------------------------------

    def enqueue(
        self, job_id: str, files: list[Path], previous: dict[str, Any] | None = None, *, force: bool = False
    ) -> dict[str, Any]:
        """Schedule delivery of ``files`` (a job's DICOM outputs) now, replacing any schedule of the job;
        destinations already ``delivered`` in ``previous`` (the status recorded before) are skipped unless
        ``force``. Returns the initial status."""
        by_uid = {str(pydicom.filereader.read_file_meta_info(p).MediaStorageSOPInstanceUID): Path(p) for p in files}
        targets = {}
        for destination in self.destinations:
            target = _Target(destination, by_uid)
            before = (previous or {}).get(destination.name) or {}
            if before.get("state") == "delivered" and not force:
                target.state, target.attempts = "delivered", int(before.get("attempts", 0))
            target.updated_at = _now()
            targets[destination.name] = target
        with self._cv:  # recorded under the lock: the first attempt's status cannot be overwritten by this one
            self._drop(job_id)
            self._jobs[job_id] = targets
            for name, target in targets.items():
                if target.state == "pending":
                    heapq.heappush(self._schedule, (time.monotonic(), next(self._sequence), job_id, name))
            self._cv.notify_all()
            status = self._status(targets)
            try:
                self.record(job_id, status)
            except BaseException:
                self._drop(job_id)
                raise
        return status

    def redeliver(
        self, job_id: str, files: list[Path], recorded: Callable[[], dict[str, Any] | None], *, force: bool = False
    ) -> dict[str, Any]:
        """``enqueue`` on request, checked and scheduled atomically; ``recorded()`` reads the job's recorded
        status, under the lock so that no attempt changes it meanwhile. JobStateError while an attempt is under
        way or about to start (or, for a job this process is not delivering, while the recorded status is pending:
        another server's); a destination waiting out its back-off is tried at once. Without ``force``,
        JobStateError when every destination has confirmed the results."""
        with self._cv:
            targets = self._jobs.get(job_id)
            current = self._status(targets) if targets else recorded() or {}
            # a pending destination is under way unless it waits out a back-off in this process
            under_way = self._sending == job_id or any(
                s.get("state") == "pending" and (targets is None or not s.get("attempts")) for s in current.values()
            )
            if under_way:
                raise JobStateError(f"Job {job_id}'s delivery is under way; see its 'delivery' status.")
            if not force and all((current.get(d.name) or {}).get("state") == "delivered" for d in self.destinations):
                raise JobStateError(
                    f"Job {job_id}'s results were delivered to every destination; nothing was sent. Add "
                    "?force=true to send them again (e.g. when the PACS lost them)."
                )
            return self.enqueue(job_id, files, current, force=force)

    def cancel(self, job_id: str) -> None:
        """Forget a job's delivery (the job was deleted); an attempt under way finishes but is not retried."""
        with self._cv:
            self._drop(job_id)
            self._cv.notify_all()

    def _drop(self, job_id: str) -> None:
        """Remove the job's targets and scheduled attempts; hold ``_cv``."""
        if self._jobs.pop(job_id, None) is not None:
            self._schedule = [entry for entry in self._schedule if entry[2] != job_id]
            heapq.heapify(self._schedule)

    @staticmethod
    def _status(targets: dict[str, _Target]) -> dict[str, Any]:
        return {name: target.public() for name, target in targets.items()}

    # -- the worker ----------------------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._stopping and (not self._schedule or self._schedule[0][0] > time.monotonic()):
                    self._cv.wait(None if not self._schedule else self._schedule[0][0] - time.monotonic())
                if self._stopping:
                    return
                _due, _seq, job_id, name = heapq.heappop(self._schedule)
                targets = self._jobs.get(job_id)
                if targets is None:
                    continue
                self._sending = job_id
            try:
                self._attempt(job_id, targets, targets[name])
            except JobNotFoundError:
                log.info("job %s was deleted; its delivery is cancelled", job_id)
                self.cancel(job_id)
            except Exception as exc:  # noqa: BLE001 - one attempt's bug must not stop every later delivery
                self._unexpected(job_id, name, exc)
            finally:
                with self._cv:
                    self._sending = None
                    self._cv.notify_all()

    def _attempt(self, job_id: str, targets: dict[str, _Target], target: _Target) -> None:
        target.attempts += 1
        retry = True
        try:
            self._send(target)
        except (ConnectionError, OSError, ValueError) as exc:  # DicomWebError, DimseError, Unconfirmed, I/O
            retry = getattr(exc, "retryable", True)
            target.error = str(exc)
        except Exception as exc:  # noqa: BLE001 - a bug while sending: a failed attempt, retried like the others
            self._unexpected(job_id, target.destination.name, exc)
            target.error = f"unexpected {type(exc).__name__} while sending (see the server log)"
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
                if self._jobs.get(job_id) is targets:  # not cancelled or replaced meanwhile
                    entry = (time.monotonic() + delay, next(self._sequence), job_id, target.destination.name)
                    heapq.heappush(self._schedule, entry)
        target.updated_at = _now()
        with self._cv:
            if self._jobs.get(job_id) is targets and all(t.state != "pending" for t in targets.values()):
                del self._jobs[job_id]  # finished: a later request starts from the recorded status
        self.record(job_id, self._status(targets))

    def _unexpected(self, job_id: str, destination: str, exc: Exception) -> None:
        metrics.DELIVERY_ERRORS.inc()
        with self._cv:
            self.unexpected_errors += 1
            count = self.unexpected_errors
        log.error("job %s: delivery to %s: unexpected %s (%d so far), at\n%s",
                  job_id, destination, type(exc).__name__, count, frame_locations(exc))

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
