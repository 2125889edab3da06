"""The study collector: grouping by study, quiet period, one submission per batch, retries and recovery; with the
server's own submission (``Services.accept``), a study survives a full queue and a refused one says why; a study sent
in bursts is re-submitted whole; a full disk does not stop the collector."""

from __future__ import annotations

import errno
import os
import shutil
import threading
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
from tests.network.conftest import CANARY_ID, CANARY_NAME, write_study


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


def collecting(tmp_path: Path, submit, clock: Clock, slices: int, **options) -> tuple[StudyCollector, list[Path]]:
    """A collector (5 s quiet period) that received a study of ``slices`` instances; the study's files."""
    collector = StudyCollector(tmp_path / "c", submit, quiet_period_s=5, clock=clock, **options)
    collector.root.mkdir()
    paths = write_study(tmp_path / "a", slices)
    for path in paths:
        collector.add(received(path, tmp_path / "s"))
    return collector, paths


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

    collector, _ = collecting(tmp_path, submit, clock, 2)
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
    assert collector.pending_studies() == {} and list((collector.root / ".submitting").iterdir()) == []
    assert sorted(p.name for p in collector.root.iterdir()) == [".submitted", ".submitting"]


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
def services(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Services]:
    """The server's submission (``Services.accept``) with one tiny CT bundle (at least 4 slices) and room for one
    queued job (or ``request.param`` jobs)."""
    write_test_bundle(tmp_path / "models")
    services = Services(Settings(data_dir=tmp_path / "data", models_dir=tmp_path / "models", bundled_models=False,
                                 device="cpu", max_queued_jobs=getattr(request, "param", 1)))
    yield services
    services.store.close()


def test_a_study_waits_out_a_full_queue_and_its_job_gets_every_instance(
    tmp_path: Path, clock: Clock, services: Services
) -> None:
    filler = services.store.create(model="tiny_ct")  # the queue is full
    collector, paths = collecting(tmp_path, lambda folder: services.accept([folder], None).id, clock, 4)
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

    collector, _ = collecting(tmp_path, submit, clock, 2)  # tiny_ct wants at least 4 slices
    clock.now += 5
    assert collector.submit_quiet() == 1
    assert collector.pending_studies() == {} and len(calls) == 1  # not retried as if the failure were transient
    assert "was rejected: " in caplog.text and "tiny_ct: series" in caplog.text
    assert "contains no files" not in caplog.text


def test_a_failing_submission_backs_off_and_is_kept_after_the_last_attempt(tmp_path: Path, clock: Clock) -> None:
    calls: list[float] = []

    def submit(folder: Path) -> str:
        calls.append(clock.now)
        raise RuntimeError("database is locked")

    collector, paths = collecting(tmp_path, submit, clock, 2, max_attempts=3)
    for _ in range(30):
        clock.now += 1
        collector.submit_quiet()
    assert calls == [1005.0, 1010.0, 1020.0]  # after the quiet period, then 5 s and 10 s of back-off
    assert collector.pending_studies() == {}
    kept = list((collector.root / ".failed").iterdir())
    assert len(kept) == 1 and sorted(p.name for p in kept[0].iterdir()) == sorted(
        f"{pydicom.dcmread(p).SOPInstanceUID}.dcm" for p in paths
    )


def staged_instances(services: Services, job_id: str) -> dict[str, str]:
    """SOPInstanceUID -> SeriesDescription of a job's staged input."""
    datasets = (pydicom.dcmread(p, stop_before_pixels=True) for p in services.files.input_dir(job_id).rglob("*.dcm"))
    return {str(ds.SOPInstanceUID): str(ds.get("SeriesDescription", "")) for ds in datasets}


@pytest.mark.parametrize("services", [2], indirect=True)
def test_a_series_sent_in_two_bursts_is_resubmitted_whole_and_the_earlier_job_is_left_alone(
    tmp_path: Path, clock: Clock, services: Services, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="inference.collector")
    collector = StudyCollector(tmp_path / "c", lambda folder: services.accept([folder], None).id, quiet_period_s=5,
                               clock=clock)
    collector.root.mkdir()
    paths = write_study(tmp_path / "a", 8)
    for path in paths[:4]:
        collector.add(received(path, tmp_path / "s"))
    clock.now += 5
    assert collector.submit_quiet() == 1
    for path in paths[4:]:  # the second burst, long after the quiet period
        collector.add(received(path, tmp_path / "s"))
    resent = pydicom.dcmread(paths[1])  # and a newer copy of an instance of the first burst
    resent.SeriesDescription = "resent"
    resent.save_as(tmp_path / "resent.dcm")
    collector.add(received(tmp_path / "resent.dcm", tmp_path / "s"))
    filler = services.store.create(model="tiny_ct")  # the queue is full: the second burst waits, alone
    clock.now += 5
    assert collector.submit_quiet() == 1 and list(collector.pending_studies().values()) == [5]
    services.store.request_cancel(filler.id)
    clock.now += 5
    assert collector.submit_quiet() == 1

    (first, second), total = services.store.list(state=JobState.queued)
    if first.created_at > second.created_at:
        first, second = second, first
    assert total == 2
    sops = [str(pydicom.dcmread(p).SOPInstanceUID) for p in paths]
    assert sorted(staged_instances(services, first.id)) == sorted(sops[:4])
    assert set(staged_instances(services, first.id).values()) == {"Synthetic CT phantom"}  # unchanged
    whole = staged_instances(services, second.id)
    assert sorted(whole) == sorted(sops) and whole[sops[1]] == "resent"
    line = f"study re-submitted as job {second.id} with 3 earlier instance(s) (8 instances in all)"
    assert line in caplog.text
    study = str(resent.StudyInstanceUID)
    kept = {p.name: p for p in (collector.root / ".submitted" / study).iterdir()}  # what a third burst would join
    assert all(kept[p.name].samefile(p) for p in services.files.input_dir(second.id).rglob("*.dcm"))  # no copies
    assert len(kept) == 8 and study not in caplog.text and CANARY_NAME not in caplog.text and CANARY_ID not in caplog.text


def test_earlier_instances_outlive_a_restart_within_the_window_and_are_removed_after_it(
    tmp_path: Path, clock: Clock
) -> None:
    wall = Clock()
    calls: list[list[str]] = []

    def submit(folder: Path) -> str:
        calls.append(sorted(p.name for p in folder.iterdir()))
        return f"job-{len(calls)}"

    def collector() -> StudyCollector:
        return StudyCollector(tmp_path / "c", submit, quiet_period_s=5, resubmit_window_s=3600, clock=clock,
                              wall_clock=wall)

    paths = write_study(tmp_path / "a", 6)
    names = [f"{pydicom.dcmread(p).SOPInstanceUID}.dcm" for p in paths]
    first = collector()
    first.recover()
    for path in paths[:2]:
        first.add(received(path, tmp_path / "s"))
    clock.now += 5
    first.submit_quiet()
    first.stop()

    wall.now += 3000  # a restart within the window
    second = collector()
    second.recover()
    second.add(received(paths[2], tmp_path / "s"))
    clock.now += 5
    second.submit_quiet()
    assert calls == [sorted(names[:2]), sorted(names[:3])]

    wall.now += 3599  # the window runs from the last submission
    second.add(received(paths[3], tmp_path / "s"))
    clock.now += 5
    second.submit_quiet()
    assert calls[-1] == sorted(names[:4])

    wall.now += 3600
    second.submit_quiet()
    assert list((second.root / ".submitted").iterdir()) == []
    for path in paths[4:]:
        second.add(received(path, tmp_path / "s"))
    clock.now += 5
    second.submit_quiet()
    assert calls[-1] == sorted(names[4:])


def disk_full_once(monkeypatch: pytest.MonkeyPatch, collector: StudyCollector, into: Path) -> list[str]:
    """Make the first move of a file out of a batch being submitted into ``into`` fail as on a full disk; returns
    where it failed."""
    failed: list[str] = []
    replace = os.replace

    def full(src: str | Path, dst: str | Path) -> None:
        if not failed and Path(src).is_relative_to(collector.root / ".submitting") and Path(dst).is_relative_to(into):
            failed.append(str(dst))
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))
        replace(src, dst)

    monkeypatch.setattr(os, "replace", full)
    return failed


def test_a_full_disk_while_a_failed_study_goes_back_to_collecting_does_not_stop_the_collector(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    submitted = threading.Event()
    calls: list[list[str]] = []

    def submit(folder: Path) -> str:
        calls.append(sorted(p.name for p in folder.iterdir()))
        if len(calls) == 1:
            raise RuntimeError("database is locked")
        submitted.set()
        return "job"

    collector = StudyCollector(tmp_path / "c", submit, quiet_period_s=0.05)
    paths = write_study(tmp_path / "a", 3)
    study = str(pydicom.dcmread(paths[0]).StudyInstanceUID)
    collector.start()
    try:
        failed = disk_full_once(monkeypatch, collector, collector.root / study)
        for path in paths:
            collector.add(received(path, tmp_path / "s"))
        assert submitted.wait(10), caplog.text
        assert collector._thread is not None and collector._thread.is_alive()
    finally:
        collector.stop()
    assert failed and calls[0] == calls[-1] and len(calls[-1]) == 3
    assert "failed (No space left on device); they stay in" in caplog.text and study not in caplog.text


def test_a_full_disk_while_parking_a_study_keeps_it_and_parks_it_later(
    tmp_path: Path, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    def submit(folder: Path) -> str:
        raise RuntimeError("database is locked")

    collector, _ = collecting(tmp_path, submit, clock, 2, max_attempts=1)
    failed = disk_full_once(monkeypatch, collector, collector.root / ".failed")
    clock.now += 5
    assert collector.submit_quiet() == 1 and failed  # parking failed: the submitter goes on
    assert collector.pending_studies() == {}
    clock.now += 5
    collector.submit_quiet()  # the stranded study goes back to collecting
    assert list(collector.pending_studies().values()) == [2]
    clock.now += 5
    collector.submit_quiet()
    kept = list((collector.root / ".failed").iterdir())
    assert len(kept) == 1 and len(list(kept[0].iterdir())) == 2 and collector.pending_studies() == {}
