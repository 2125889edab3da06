"""Group instances that arrive over time (C-STORE, STOW-RS, C-MOVE) by study; submit a study once it is quiet.

Layout under ``root``::

    <root>/<StudyInstanceUID>/<SOPInstanceUID>.dcm   instances of a study still collecting (durable)
    <root>/.submitting/<StudyInstanceUID>-<n>/         a study being handed to ``submit``
    <root>/.failed/<StudyInstanceUID>-<n>/             a study given up after ``max_attempts`` failed submissions

``add`` moves the received file into its study folder and fsyncs it before returning, so a C-STORE answered
"success" survives a crash; on start, folders left by a previous run are collected again. A study is submitted
when no instance of it arrived for ``quiet_period_s``: its folder is first renamed away (instances arriving
meanwhile start a new collection), then ``submit(folder) -> job_id`` is called. ``submit`` must leave the files
in place (the job gets its own links or copies); the folder is removed once ``submit`` returned a job. So an
instance answered "success" is deleted only when a job holds it or the study was refused for good: a rejected
study (:class:`~dicom_io.errors.InputRejected`, :class:`~inference.errors.NoModelForStudyError`) is dropped with
its reason; a full queue is waited out (``QueueFullError`` counts no attempt); any other failure is retried with
a back-off that doubles from ``quiet_period_s`` (at most ``max_retry_delay_s``), and after ``max_attempts`` the
instances are kept in ``.failed`` for an operator (move the folder back to ``<root>/<StudyInstanceUID>`` and
restart to try again). A crash after ``submit`` created the job but before the folder was removed submits the
study once more (at least once, never lost).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from dicom_io.errors import InputRejected
from dicom_io.network.instances import ReceivedInstance
from inference.errors import NoModelForStudyError, QueueFullError

log = logging.getLogger(__name__)

_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_SUBMITTING = ".submitting"
_FAILED = ".failed"

Submit = Callable[[Path], str]


@dataclass
class _Pending:
    last_arrival: float
    instances: int
    attempts: int = 0
    not_before: float = 0.0  # a failed submission's back-off


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _check_uid(value: str, keyword: str) -> str:
    if len(value) > 64 or not _UID.match(value):
        raise InputRejected(f"{keyword} {value[:70]!r} is not a valid UID (digits and dots, at most 64 characters)")
    return value


class StudyCollector:
    """Collects instances per study and calls ``submit(study_dir)`` after ``quiet_period_s`` without arrivals."""

    def __init__(
        self,
        root: Path,
        submit: Submit,
        *,
        quiet_period_s: float = 30.0,
        max_attempts: int = 8,
        max_retry_delay_s: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if quiet_period_s <= 0:
            raise ValueError(f"quiet_period_s must be positive, got {quiet_period_s}")
        self.root = Path(root)
        self.submit = submit
        self.quiet_period_s = quiet_period_s
        self.max_attempts = max_attempts
        self.max_retry_delay_s = max_retry_delay_s
        self._clock = clock
        self._lock = threading.Lock()
        self._pending: dict[str, _Pending] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._batch = 0

    # -- lifecycle -----------------------------------------------------------------------------------

    def start(self) -> None:
        """Recover folders left by a previous run and start the background submitter."""
        self.recover()
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="radinfer-collector", daemon=True)
        self._thread.start()

    def recover(self) -> None:
        """Collect again the instances a previous run left on disk (they count as just arrived)."""
        self.root.mkdir(parents=True, exist_ok=True)
        submitting = self.root / _SUBMITTING
        if submitting.is_dir():  # interrupted hand-over: collect those instances again
            for batch in submitting.iterdir():
                study = batch.name.rsplit("-", 1)[0]
                if _UID.match(study):
                    target = self.root / study
                    target.mkdir(exist_ok=True)
                    for file in batch.iterdir():
                        os.replace(file, target / file.name)
                shutil.rmtree(batch, ignore_errors=True)
        now = self._clock()
        with self._lock:
            for folder in self.root.iterdir():
                if folder.is_dir() and _UID.match(folder.name):
                    count = sum(1 for _ in folder.iterdir())
                    self._pending.setdefault(folder.name, _Pending(now, count))
        if self._pending:
            log.info("collector: %d study(ies) left by a previous run will be submitted when quiet", len(self._pending))

    def stop(self) -> None:
        """Stop submitting; collected instances stay on disk for the next start."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    # -- arrivals ------------------------------------------------------------------------------------

    def add(self, instance: ReceivedInstance) -> None:
        """Take ownership of a received file: move it into its study folder durably (an :data:`AcceptInstance`)."""
        study = _check_uid(instance.study_instance_uid, "StudyInstanceUID")
        name = _check_uid(instance.sop_instance_uid, "SOPInstanceUID") + ".dcm"
        fd = os.open(instance.path, os.O_RDONLY)
        try:
            os.fsync(fd)  # outside the lock: concurrent associations flush in parallel
        finally:
            os.close(fd)
        with self._lock:
            folder = self.root / study
            created = not folder.is_dir()
            folder.mkdir(parents=True, exist_ok=True)
            os.replace(instance.path, folder / name)  # same filesystem: an atomic rename
            _fsync_dir(folder)
            if created:
                _fsync_dir(self.root)
            pending = self._pending.setdefault(study, _Pending(0.0, 0))
            pending.last_arrival = self._clock()
            pending.instances += 1

    def pending_studies(self) -> dict[str, int]:
        """Study UID -> instances received so far, for studies not yet submitted."""
        with self._lock:
            return {uid: p.instances for uid, p in self._pending.items()}

    # -- submission ----------------------------------------------------------------------------------

    def _loop(self) -> None:
        interval = min(1.0, self.quiet_period_s / 4)
        while not self._stop.wait(interval):
            self.submit_quiet()

    def submit_quiet(self) -> int:
        """Submit every study quiet for ``quiet_period_s``; returns how many were handed to ``submit``."""
        now = self._clock()
        with self._lock:
            due = [
                uid
                for uid, p in self._pending.items()
                if now - p.last_arrival >= self.quiet_period_s and now >= p.not_before
            ]
            batches = []
            for uid in due:
                pending = self._pending.pop(uid)
                self._batch += 1
                batch = self.root / _SUBMITTING / f"{uid}-{self._batch}"
                batch.parent.mkdir(exist_ok=True)
                os.replace(self.root / uid, batch)
                batches.append((uid, batch, pending))
        for uid, batch, pending in batches:
            self._submit_one(uid, batch, pending)
        return len(batches)

    def _submit_one(self, uid: str, batch: Path, pending: _Pending) -> None:
        try:
            job_id = self.submit(batch)
        except (InputRejected, NoModelForStudyError) as exc:
            log.warning("collector: a study of %d instance(s) was rejected and dropped: %s", pending.instances, exc)
        except QueueFullError as exc:  # back-pressure, not a failure: wait until the queue drains
            log.warning("collector: the job queue is full, a study waits: %s", exc)
            self._requeue(uid, batch, pending, max(self.quiet_period_s, exc.retry_after_s))
            return
        except Exception as exc:  # noqa: BLE001 - retried below, the reason is logged
            pending.attempts += 1
            if pending.attempts >= self.max_attempts:
                self._park(batch, pending, exc)
            else:
                delay = min(self.max_retry_delay_s, self.quiet_period_s * 2 ** (pending.attempts - 1))
                log.warning("collector: submitting a study failed (attempt %d), retrying in %.0f s: %s",
                            pending.attempts, delay, exc)
                self._requeue(uid, batch, pending, delay)
            return
        else:
            log.info("collector: study submitted as job %s (%d instances)", job_id, pending.instances)
        shutil.rmtree(batch, ignore_errors=True)

    def _park(self, batch: Path, pending: _Pending, exc: Exception) -> None:
        """Keep a study given up on in ``.failed``: its instances were answered "success", never delete them."""
        failed = self.root / _FAILED
        failed.mkdir(exist_ok=True)
        os.replace(batch, failed / batch.name)
        log.error("collector: giving up on a study of %d instance(s) after %d attempts (%s); its instances are "
                  "kept in %s", pending.instances, pending.attempts, exc, failed)

    def _requeue(self, uid: str, batch: Path, pending: _Pending, delay_s: float) -> None:
        with self._lock:
            folder = self.root / uid
            folder.mkdir(exist_ok=True)
            for file in batch.iterdir():
                if not (folder / file.name).exists():  # a newer copy of the same instance wins
                    os.replace(file, folder / file.name)
            shutil.rmtree(batch, ignore_errors=True)
            now = self._clock()
            current = self._pending.setdefault(uid, _Pending(now, 0, pending.attempts))
            current.instances += pending.instances
            current.attempts = max(current.attempts, pending.attempts)
            current.last_arrival = now
            current.not_before = now + delay_s
