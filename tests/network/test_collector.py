"""The study collector: grouping by study, quiet period, one submission per batch, retries and recovery; with the
server's own submission (``Services.accept``), a study survives a full queue and a refused one says why."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

from api.config import Settings
from api.services import Services
from dicom_io.errors import InputRejected
from dicom_io.network.instances import ReceivedInstance
from inference.collector import StudyCollector
from inference.jobs.store import JobState
from tests.api.conftest import write_test_bundle
from tests.network.conftest import write_study


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def received(path: Path, scratch: Path) -> ReceivedInstance:
    """A copy of ``path`` in ``scratch`` as the SCP would hand it over."""
    scratch.mkdir(exist_ok=True)
    copy = Path(shutil.copy(path, scratch / f"in-{path.name}"))
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return ReceivedInstance(copy, ds.SOPClassUID, ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID,
                            str(ds.file_meta.TransferSyntaxUID), "TEST")


@pytest.fixture
def clock() -> Clock:
    return Clock()


def test_studies_are_grouped_and_submitted_after_their_own_quiet_period(tmp_path: Path, clock: Clock) -> None:
    calls: list[tuple[str, int]] = []
    collector = StudyCollector(tmp_path / "c", lambda d: calls.append((d.name, len(list(d.iterdir())))) or "job",
                               quiet_period_s=10, clock=clock)
    a = write_study(tmp_path / "a", 3)
    b = write_study(tmp_path / "b", 2)
    collector.root.mkdir()
    for path in a:
        collector.add(received(path, tmp_path / "s"))
    clock.now += 6
    collector.add(received(b[0], tmp_path / "s"))
    clock.now += 6  # a is quiet for 12 s, b only 6 s
    assert collector.submit_quiet() == 1
    clock.now += 2
    collector.add(received(b[1], tmp_path / "s"))  # resets b's quiet period
    clock.now += 9
    assert collector.submit_quiet() == 0
    clock.now += 1
    assert collector.submit_quiet() == 1
    study_a, study_b = (str(pydicom.dcmread(x[0]).StudyInstanceUID) for x in (a, b))
    assert [(name.rsplit("-", 1)[0], n) for name, n in calls] == [(study_a, 3), (study_b, 2)]
    assert collector.submit_quiet() == 0 and collector.pending_studies() == {}


def test_a_rejected_study_is_dropped_and_a_failing_submit_is_retried(tmp_path: Path, clock: Clock) -> None:
    outcomes = [RuntimeError("queue full"), "job-1"]
    seen: list[int] = []

    def submit(folder: Path) -> str:
        seen.append(len(list(folder.iterdir())))
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    collector = StudyCollector(tmp_path / "c", submit, quiet_period_s=5, clock=clock)
    collector.root.mkdir()
    for path in write_study(tmp_path / "a", 2):
        collector.add(received(path, tmp_path / "s"))
    clock.now += 5
    assert collector.submit_quiet() == 1  # fails, goes back to collecting
    assert list(collector.pending_studies().values()) == [2]
    clock.now += 5
    assert collector.submit_quiet() == 1 and seen == [2, 2] and collector.pending_studies() == {}

    def reject(folder: Path) -> str:
        raise InputRejected("no model accepts this study")

    collector.submit = reject
    collector.add(received(write_study(tmp_path / "b", 1)[0], tmp_path / "s"))
    clock.now += 5
    assert collector.submit_quiet() == 1
    assert collector.pending_studies() == {} and [p.name for p in collector.root.iterdir()] == [".submitting"]
    assert list((collector.root / ".submitting").iterdir()) == []


def test_instances_left_by_a_previous_run_are_submitted_after_restart(tmp_path: Path, clock: Clock) -> None:
    first = StudyCollector(tmp_path / "c", lambda d: "never", quiet_period_s=5, clock=clock)
    first.root.mkdir()
    paths = write_study(tmp_path / "a", 3)
    for path in paths:
        first.add(received(path, tmp_path / "s"))
    # simulate a crash in the middle of a hand-over: one instance already moved to .submitting
    study = str(pydicom.dcmread(paths[0]).StudyInstanceUID)
    moving = first.root / ".submitting" / f"{study}-7"
    moving.mkdir(parents=True)
    one = next((first.root / study).iterdir())
    one.rename(moving / one.name)

    calls: list[int] = []
    second = StudyCollector(tmp_path / "c", lambda d: calls.append(len(list(d.iterdir()))) or "job", quiet_period_s=5,
                            clock=clock)
    second.recover()
    assert second.pending_studies() == {study: 3}
    clock.now += 5
    assert second.submit_quiet() == 1 and calls == [3]


def test_add_refuses_a_non_uid_study_identifier(tmp_path: Path) -> None:
    collector = StudyCollector(tmp_path / "c", lambda d: "job", quiet_period_s=1)
    path = write_study(tmp_path / "a", 1)[0]
    instance = received(path, tmp_path / "s")
    bad = ReceivedInstance(instance.path, instance.sop_class_uid, instance.sop_instance_uid, "../../etc",
                           instance.series_instance_uid, instance.transfer_syntax_uid, "TEST")
    with pytest.raises(InputRejected, match="StudyInstanceUID"):
        collector.add(bad)


@pytest.fixture
def services(tmp_path: Path) -> Iterator[Services]:
    """The server's submission (``Services.accept``) with one tiny CT bundle (at least 4 slices) and room for one
    queued job."""
    write_test_bundle(tmp_path / "models")
    services = Services(Settings(data_dir=tmp_path / "data", models_dir=tmp_path / "models", bundled_models=False,
                                 device="cpu", max_queued_jobs=1))
    yield services
    services.store.close()


def test_a_study_waits_out_a_full_queue_and_its_job_gets_every_instance(
    tmp_path: Path, clock: Clock, services: Services
) -> None:
    filler = services.store.create(model="tiny_ct")  # the queue is full
    collector = StudyCollector(tmp_path / "c", lambda folder: services.accept([folder], None).id, quiet_period_s=5,
                               clock=clock)
    collector.root.mkdir()
    paths = write_study(tmp_path / "a", 4)
    for path in paths:
        collector.add(received(path, tmp_path / "s"))
    clock.now += 5
    assert collector.submit_quiet() == 1  # 503: the instances go back to collecting
    assert list(collector.pending_studies().values()) == [4]
    services.store.request_cancel(filler.id)  # the queue drains
    clock.now += 5
    assert collector.submit_quiet() == 1
    jobs, total = services.store.list(state=JobState.queued)
    assert total == 1 and jobs[0].study_instance_uid == str(pydicom.dcmread(paths[0]).StudyInstanceUID)
    staged = sorted(p.name for p in services.files.input_dir(jobs[0].id).rglob("*.dcm"))
    assert staged == sorted(f"{pydicom.dcmread(p).SOPInstanceUID}.dcm" for p in paths)
    assert collector.pending_studies() == {} and list((collector.root / ".submitting").iterdir()) == []


def test_a_study_no_model_accepts_is_dropped_at_once_with_the_reason(
    tmp_path: Path, clock: Clock, services: Services, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[Path] = []

    def submit(folder: Path) -> str:
        calls.append(folder)
        return services.accept([folder], None).id

    collector = StudyCollector(tmp_path / "c", submit, quiet_period_s=5, clock=clock)
    collector.root.mkdir()
    for path in write_study(tmp_path / "a", 2):  # tiny_ct wants at least 4 slices
        collector.add(received(path, tmp_path / "s"))
    clock.now += 5
    assert collector.submit_quiet() == 1
    assert collector.pending_studies() == {} and len(calls) == 1  # not retried as if the failure were transient
    assert "rejected and dropped: " in caplog.text and "tiny_ct: series" in caplog.text
    assert "contains no files" not in caplog.text


def test_a_failing_submission_backs_off_and_is_kept_after_the_last_attempt(tmp_path: Path, clock: Clock) -> None:
    calls: list[float] = []

    def submit(folder: Path) -> str:
        calls.append(clock.now)
        raise RuntimeError("database is locked")

    collector = StudyCollector(tmp_path / "c", submit, quiet_period_s=5, max_attempts=3, clock=clock)
    collector.root.mkdir()
    paths = write_study(tmp_path / "a", 2)
    for path in paths:
        collector.add(received(path, tmp_path / "s"))
    for _ in range(30):
        clock.now += 1
        collector.submit_quiet()
    assert calls == [1005.0, 1010.0, 1020.0]  # after the quiet period, then 5 s and 10 s of back-off
    assert collector.pending_studies() == {}
    kept = list((collector.root / ".failed").iterdir())
    assert len(kept) == 1 and sorted(p.name for p in kept[0].iterdir()) == sorted(
        f"{pydicom.dcmread(p).SOPInstanceUID}.dcm" for p in paths
    )
