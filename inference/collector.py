"""Group instances that arrive over time (C-STORE, STOW-RS, C-MOVE) by study; submit a study once it is quiet.

Layout under ``root``::

    <root>/<StudyInstanceUID>/<SOPInstanceUID>.dcm   instances of a study still collecting (durable)
    <root>/.submitting/<StudyInstanceUID>-<n>/         a study being handed to ``submit``
    <root>/.submitted/<StudyInstanceUID>/              the instances of a study's last submission, for a while
    <root>/.failed/<StudyInstanceUID>-<n>/             a study given up after ``max_attempts`` failed submissions

``add`` moves the received file into its study folder and fsyncs it before returning, so a C-STORE answered
"success" survives a crash; on start, folders left by a previous run are collected again. A study is submitted
when no instance of it arrived for ``quiet_period_s``: its folder is first renamed away (instances arriving
meanwhile start a new collection), then ``submit(folder) -> job_id`` is called. ``submit`` must leave the files
in place (the job gets its own links or copies). So an instance answered "success" is deleted only when a job
holds it or the study was refused for good: a rejected study (:class:`~dicom_io.errors.InputRejected`,
:class:`~inference.errors.NoModelForStudyError`) is not retried, and the log gives its reason; a full queue is
waited out (``QueueFullError`` counts no attempt); any other failure is retried with a back-off that doubles from
``quiet_period_s`` (at most ``max_retry_delay_s``), and after ``max_attempts`` the instances are kept in
``.failed`` for an operator (move the folder back to ``<root>/<StudyInstanceUID>`` and restart to try again). A
crash after ``submit`` created the job but before the folder was put away submits the study once more (at least
once, never lost).

Senders split a study into bursts further apart than the quiet period (a modality sending while it acquires, a
PACS retrying after a network error). So a submitted (or rejected) study's folder moves to ``.submitted`` and stays
there for ``resubmit_window_s`` after its last submission (hard links: the job shares the files' inodes, and the
folder survives a restart). Instances of the study that arrive within that window are submitted together with
those earlier ones, de-duplicated by SOPInstanceUID with the newer copy winning, so the later job reads the whole
series; the earlier job stays as it is. After the window the folder is removed.

A file operation that fails (a full disk) never stops the submitter: the study's files stay where they are, the
log says so, and they go back to collecting after ``quiet_period_s``.
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
_SUBMITTED = ".submitted"
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


def _reason(exc: OSError) -> str:
    """An OSError without its file names (they hold the StudyInstanceUID)."""
    return exc.strerror or type(exc).__name__


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
        resubmit_window_s: float = 4 * 3600.0,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if quiet_period_s <= 0:
            raise ValueError(f"quiet_period_s must be positive, got {quiet_period_s}")
        self.root = Path(root)
        self.submit = submit
        self.quiet_period_s = quiet_period_s
        self.max_attempts = max_attempts
        self.max_retry_delay_s = max_retry_delay_s
        self.resubmit_window_s = resubmit_window_s
        self._clock = clock
        self._wall_clock = wall_clock  # the window outlives a restart: file times, not the monotonic clock
        self._lock = threading.Lock()
        self._pending: dict[str, _Pending] = {}
        self._submitted: dict[str, float] = {}  # study -> wall time of its last submission (``.submitted``)
        self._stranded: dict[Path, tuple[str, _Pending]] = {}  # batch -> study, after a failed file operation
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
        """Collect again the instances a previous run left on disk (they count as just arrived), and take over its
        ``.submitted`` folders for the rest of their window."""
        self.root.mkdir(parents=True, exist_ok=True)
        submitted = self.root / _SUBMITTED
        if submitted.is_dir():
            for folder in submitted.iterdir():
                if _UID.match(folder.name):
                    self._submitted[folder.name] = folder.stat().st_mtime
        self._expire_submitted()
        submitting = self.root / _SUBMITTING
        if submitting.is_dir():  # interrupted hand-over: collect those instances again
            for batch in submitting.iterdir():
                study = batch.name.rsplit("-", 1)[0]
                if _UID.match(study):
                    self._return_to_collecting(study, batch)
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
        self._expire_submitted()
        self._retry_stranded()
        now = self._clock()
        with self._lock:
            due = [
                uid
                for uid, p in self._pending.items()
                if now - p.last_arrival >= self.quiet_period_s and now >= p.not_before
            ]
            batches = [taken for uid in due if (taken := self._take(uid, now)) is not None]
        for uid, batch, pending in batches:
            try:
                self._submit_one(uid, batch, pending)
            except OSError as exc:
                self._strand(uid, batch, pending, exc)
        return len(batches)

    def _take(self, uid: str, now: float) -> tuple[str, Path, _Pending] | None:
        """Rename a quiet study's folder away for submission (under the lock); None when that failed."""
        self._batch += 1
        batch = self.root / _SUBMITTING / f"{uid}-{self._batch}"
        try:
            batch.parent.mkdir(exist_ok=True)
            os.replace(self.root / uid, batch)
        except OSError as exc:
            self._pending[uid].not_before = now + self.quiet_period_s
            log.error("collector: could not set a study aside for submission (%s); trying again in %.0f s",
                      _reason(exc), self.quiet_period_s)
            return None
        return uid, batch, self._pending.pop(uid)

    def _submit_one(self, uid: str, batch: Path, pending: _Pending) -> None:
        earlier = self._add_earlier(uid, batch)
        instances = sum(1 for _ in batch.iterdir())
        try:
            job_id = self.submit(batch)
        except (InputRejected, NoModelForStudyError) as exc:
            log.warning("collector: a study of %d instance(s) was rejected: %s", instances, exc)
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
            if earlier:
                log.info("collector: study re-submitted as job %s with %d earlier instance(s) (%d instances in all)",
                         job_id, earlier, instances)
            else:
                log.info("collector: study submitted as job %s (%d instances)", job_id, instances)
        self._keep(uid, batch)

    def _add_earlier(self, uid: str, batch: Path) -> int:
        """Hard-link into ``batch`` the instances of the study's last submission that it lacks (a newer copy of an
        instance wins); returns how many."""
        if uid not in self._submitted:
            return 0
        added = 0
        for file in (self.root / _SUBMITTED / uid).iterdir():
            if not (batch / file.name).exists():
                os.link(file, batch / file.name)
                added += 1
        return added

    def _keep(self, uid: str, batch: Path) -> None:
        """Make ``batch`` (the union with the earlier instances) the study's ``.submitted`` folder, stamped now."""
        kept = self.root / _SUBMITTED / uid
        now = self._wall_clock()
        try:
            kept.parent.mkdir(exist_ok=True)
            shutil.rmtree(kept, ignore_errors=True)  # a crash until the rename re-submits ``batch``: nothing lost
            os.replace(batch, kept)
            os.utime(kept, (now, now))
            _fsync_dir(kept)  # the links to the earlier instances
            _fsync_dir(kept.parent)
        except OSError as exc:  # the job holds the instances; only a later burst misses them
            log.warning("collector: could not keep a submitted study's instances (%s); instances of it arriving "
                        "later are submitted without them", _reason(exc))
            shutil.rmtree(batch, ignore_errors=True)
            self._submitted.pop(uid, None)
            return
        self._submitted[uid] = now

    def _expire_submitted(self) -> None:
        now = self._wall_clock()
        for uid, at in list(self._submitted.items()):
            if now - at >= self.resubmit_window_s:
                shutil.rmtree(self.root / _SUBMITTED / uid, ignore_errors=True)
                del self._submitted[uid]

    def _park(self, batch: Path, pending: _Pending, exc: Exception) -> None:
        """Keep a study given up on in ``.failed``: its instances were answered "success", never delete them."""
        failed = self.root / _FAILED
        failed.mkdir(exist_ok=True)
        os.replace(batch, failed / batch.name)
        log.error("collector: giving up on a study of %d instance(s) after %d attempts (%s); its instances are "
                  "kept in %s", pending.instances, pending.attempts, exc, failed)

    def _requeue(self, uid: str, batch: Path, pending: _Pending, delay_s: float) -> None:
        with self._lock:
            self._return_to_collecting(uid, batch)
            shutil.rmtree(batch, ignore_errors=True)
            now = self._clock()
            current = self._pending.setdefault(uid, _Pending(now, 0, pending.attempts))
            current.instances += pending.instances
            current.attempts = max(current.attempts, pending.attempts)
            current.last_arrival = now
            current.not_before = now + delay_s

    def _return_to_collecting(self, uid: str, batch: Path) -> None:
        """Move a batch's own instances back into the study's folder; a newer copy there wins, and the earlier
        instances linked in by :meth:`_add_earlier` stay only in ``.submitted``."""
        folder = self.root / uid
        folder.mkdir(exist_ok=True)
        for file in batch.iterdir():
            earlier = self.root / _SUBMITTED / uid / file.name
            if not (folder / file.name).exists() and not (earlier.exists() and earlier.samefile(file)):
                os.replace(file, folder / file.name)

    def _strand(self, uid: str, batch: Path, pending: _Pending, exc: OSError) -> None:
        """A file operation on ``batch`` failed: leave its files where they are and retry after the quiet period."""
        pending.not_before = self._clock() + self.quiet_period_s
        self._stranded[batch] = (uid, pending)
        log.error("collector: moving the files of a study of %d instance(s) failed (%s); they stay in %s and are "
                  "collected again in %.0f s", pending.instances, _reason(exc), batch.parent, self.quiet_period_s)

    def _retry_stranded(self) -> None:
        now = self._clock()
        for batch, (uid, pending) in list(self._stranded.items()):
            if now >= pending.not_before:
                del self._stranded[batch]
                try:
                    self._requeue(uid, batch, pending, 0.0)
                except OSError as exc:
                    self._strand(uid, batch, pending, exc)
