"""The server as a DICOM node: one object that wires the SCP, the study collector, PACS pull and result delivery.

``PacsNode(config, submit=..., store=..., files=...)`` with ``start()``/``stop()`` in the app's lifespan;
``node.accept`` is the sink of the STOW-RS router. ``submit(folder) -> job_id`` turns a folder of one study's
instances into a queued job (in the server: ``Services.accept``); a job that succeeded is picked up by a poller
and its DICOM outputs (``output/*.dcm``) are delivered to every destination, the status stored in the job's
``delivery`` column. Delivery still pending when the server stopped resumes at the next start.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from dicom_io.limits import Limits
from dicom_io.network.destinations import Destination, DicomWebDestination
from dicom_io.network.dicomweb import retrieve_study
from dicom_io.network.instances import ReceivedInstance
from dicom_io.network.scp import ScpConfig, StorageSCP
from dicom_io.network.scu import get_study, move_study
from inference.collector import StudyCollector
from inference.delivery import Delivery, dicom_files
from inference.errors import JobStateError
from inference.jobs.files import JobFiles
from inference.jobs.store import JobState, JobStore

log = logging.getLogger(__name__)

# Jobs that finished this long before start-up but were never handed to delivery (a crash in between) are sent.
_CATCH_UP = timedelta(minutes=10)


@dataclass(frozen=True)
class PacsConfig:
    """DICOM networking settings (see api/config.py for the RADINFER_* variables that fill them)."""

    work_dir: Path
    ae_title: str = "RADINFER"
    dicom_port: int | None = None  # None: no SCP
    dicom_host: str = "0.0.0.0"
    allowed_ae_titles: frozenset[str] | None = frozenset()
    max_associations: int = 10
    max_pdu_bytes: int = 262_144
    quiet_period_s: float = 30.0
    destinations: tuple[Destination, ...] = ()
    pull_source: Destination | None = None
    pull_method: str = "get"  # for a dimse:// source: "get" (C-GET) or "move" (C-MOVE to our own SCP)
    delivery_max_attempts: int = 8
    delivery_base_delay_s: float = 5.0
    delivery_max_delay_s: float = 600.0
    poll_interval_s: float = 2.0
    limits: Limits = field(default_factory=Limits)


class PacsNode:
    def __init__(self, config: PacsConfig, *, submit: Callable[[Path], str], store: JobStore, files: JobFiles) -> None:
        if config.pull_method not in ("get", "move"):
            raise ValueError(f"pull method {config.pull_method!r} is not known; use get or move")
        self.config = config
        self.submit = submit
        self.store = store
        self.files = files
        self.collector = StudyCollector(config.work_dir / "collect", submit, quiet_period_s=config.quiet_period_s)
        self.scp = (
            StorageSCP(
                ScpConfig(
                    incoming_dir=config.work_dir / "incoming",
                    ae_title=config.ae_title,
                    host=config.dicom_host,
                    port=config.dicom_port,
                    allowed_calling_aets=config.allowed_ae_titles,
                    max_associations=config.max_associations,
                    max_pdu_bytes=config.max_pdu_bytes,
                    limits=config.limits,
                ),
                self.collector.add,
            )
            if config.dicom_port is not None
            else None
        )
        self.delivery = Delivery(
            list(config.destinations),
            store.set_delivery,
            calling_ae=config.ae_title,
            max_attempts=config.delivery_max_attempts,
            base_delay_s=config.delivery_base_delay_s,
            max_delay_s=config.delivery_max_delay_s,
        )
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        self._since = datetime.now(timezone.utc) - _CATCH_UP

    @property
    def scratch_dir(self) -> Path:
        """Where the STOW-RS router writes request parts (same filesystem as the collector)."""
        return self.config.work_dir / "stow"

    def accept(self, instance: ReceivedInstance) -> None:
        """The STOW-RS sink: the collector takes the instance."""
        self.collector.add(instance)

    def start(self) -> None:
        self.collector.start()
        if self.scp is not None:
            self.scp.start()
        if self.config.destinations:
            self.delivery.start()
            self._resume_pending()
            self._stop.clear()
            self._poller = threading.Thread(target=self._poll, name="radinfer-delivery-poller", daemon=True)
            self._poller.start()

    def stop(self) -> None:
        self._stop.set()
        if self._poller is not None:
            self._poller.join(timeout=30)
            self._poller = None
        if self.scp is not None:
            self.scp.stop()
        self.collector.stop()
        if self.config.destinations:
            self.delivery.stop()

    # -- pull ----------------------------------------------------------------------------------------

    def pull(self, study_uid: str) -> str | None:
        """Fetch a study from the pull source and submit it: the job id, or None for C-MOVE (the instances
        arrive at our SCP and the collector submits them after the quiet period)."""
        source = self.config.pull_source
        if source is None:
            raise ValueError("no PACS pull source is configured; set RADINFER_PACS_PULL_SOURCE")
        if not isinstance(source, DicomWebDestination) and self.config.pull_method == "move":
            if self.scp is None:
                raise ValueError("C-MOVE needs our SCP to receive the study; set RADINFER_DICOM_PORT")
            moved = move_study(source, study_uid, self.config.ae_title, calling_ae=self.config.ae_title)
            log.info("pull: %d instance(s) moved from %s", moved, source.name)
            return None
        folder = Path(tempfile.mkdtemp(prefix="pull-", dir=self._pull_root()))
        try:
            if isinstance(source, DicomWebDestination):
                retrieve_study(source, study_uid, folder)
            else:
                get_study(source, study_uid, folder, calling_ae=self.config.ae_title)
            return self.submit(folder)
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def _pull_root(self) -> Path:
        root = self.config.work_dir / "pull"
        root.mkdir(parents=True, exist_ok=True)
        return root

    # -- delivery of finished jobs -------------------------------------------------------------------

    def deliver_finished(self) -> int:
        """Hand every recently succeeded job without a delivery status to delivery; how many were."""
        handed = 0
        jobs, _total = self.store.list(state=JobState.succeeded, limit=200)
        for job in jobs:
            if job.delivery is not None or job.finished_at is None or job.finished_at < self._since:
                continue
            outputs = dicom_files(self.files.output_dir(job.id))
            if outputs:
                self.delivery.enqueue(job.id, outputs)
            else:
                self.store.set_delivery(job.id, {})
            handed += 1
        return handed

    def redeliver(self, job_id: str, *, force: bool = False) -> dict[str, Any]:
        """Send a succeeded job's DICOM results again to every destination that has not confirmed them (after a
        failed delivery's cause was fixed: credentials, AE title, an archive that was down too long); one waiting
        out a back-off is tried at once. ``force`` sends them to every destination, delivered ones too (the PACS
        lost them). JobStateError (409) when there is nothing to send or an attempt is under way."""
        job = self.store.get(job_id)  # JobNotFoundError (404) first
        if not self.delivery.destinations:
            raise JobStateError("No delivery destination is configured; set RADINFER_DESTINATIONS.")
        if job.state is not JobState.succeeded:
            raise JobStateError(f"Job {job_id} is {job.state.value}; only a succeeded job's results are delivered.")
        outputs = dicom_files(self.files.output_dir(job_id))
        if not outputs:
            raise JobStateError(f"Job {job_id} has no DICOM results to deliver.")
        status = self.delivery.redeliver(job_id, outputs, lambda: self.store.get(job_id).delivery, force=force)
        log.info("job %s: delivery requested again%s", job_id, " to every destination" if force else "")
        return status

    def problems(self) -> list[str]:
        """Why the node cannot do its work, for /readyz: a background thread of delivery that stopped."""
        if not self.config.destinations:
            return []
        stopped = [name for name, alive in (("delivery", self.delivery.alive), ("delivery poller", self._polling))
                   if not alive]
        return [f"result {name} thread is not running; results are not sent (see the server log)" for name in stopped]

    @property
    def _polling(self) -> bool:
        return self._poller is not None and self._poller.is_alive()

    def _resume_pending(self) -> None:
        jobs, _total = self.store.list(state=JobState.succeeded, limit=1000)
        for job in jobs:
            if job.delivery and any(s.get("state") == "pending" for s in job.delivery.values()):
                outputs = dicom_files(self.files.output_dir(job.id))
                self.delivery.enqueue(job.id, outputs, previous=job.delivery)
                log.info("job %s: resuming delivery after restart", job.id)

    def _poll(self) -> None:
        while not self._stop.wait(self.config.poll_interval_s):
            try:
                self.delivery.revive()  # watchdog: the delivery thread survives failed attempts, but not everything
                self.deliver_finished()
            except Exception:
                log.exception("delivery poller: listing finished jobs failed")
                time.sleep(self.config.poll_interval_s)
