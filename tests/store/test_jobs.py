import uuid
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from store import blobs, jobs
from store.models import JobState, utcnow
from store.settings import Settings


@dataclass(frozen=True)
class FakeImage:
    path: str
    blob_name: str
    blob_offset: int | None = None
    size_bytes: int = 10
    width: int = 16
    height: int = 16
    format: str = "PNG"


def new_job(session: Session, n: int = 3, **kwargs: object) -> jobs.Job:  # type: ignore[name-defined]
    images = [FakeImage(f"a/{i}.png", f"{i:06d}.png") for i in range(n)]
    return jobs.create_job(
        session,
        job_id=uuid.uuid4(),
        params={"k": 2, "method": "kmeans"},
        archive_format="zip",
        archive_entries=n,
        images=images,
        skipped=[],
        **kwargs,
    )


def test_create_job_records_images_in_order(session: Session) -> None:
    job = new_job(session, n=4)
    session.commit()
    rows = jobs.list_images(session, job_id=job.id)
    assert [row.seq for row in rows] == [0, 1, 2, 3]
    assert job.state == JobState.QUEUED and job.n_images == 4
    assert job.created_at.tzinfo is not None


def test_claim_job_is_compare_and_set(sessions: sessionmaker[Session]) -> None:
    with sessions() as setup:
        job_id = new_job(setup).id
        setup.commit()
    with sessions() as b:  # a second claimer reads the queued version first
        seen_by_b = jobs.get_job(b, job_id=job_id)
        assert seen_by_b is not None
        b.expunge(seen_by_b)
    with sessions() as a:
        seen_by_a = jobs.get_job(a, job_id=job_id)
        assert seen_by_a is not None
        assert jobs.claim_job(a, job=seen_by_a, worker_id="a:1")
        a.commit()
    assert seen_by_a.state == JobState.RUNNING and seen_by_a.attempts == 1
    with sessions() as b:
        assert not jobs.claim_job(b, job=seen_by_b, worker_id="b:2")


def test_request_cancel_moves_queued_to_cancelled_and_running_to_cancelling(
    session: Session,
) -> None:
    queued, running, finished = new_job(session), new_job(session), new_job(session)
    session.commit()
    jobs.claim_job(session, job=running, worker_id="a:1")
    jobs.finish_job(session, job_id=finished.id, worker_id=None, state=JobState.SUCCEEDED)
    session.refresh(finished)
    assert jobs.request_cancel(session, job=queued) and queued.state == JobState.CANCELLED
    assert jobs.request_cancel(session, job=running) and running.state == JobState.CANCELLING
    assert not jobs.request_cancel(session, job=finished)


def test_delete_job_refuses_a_running_job(session: Session) -> None:
    job = new_job(session)
    session.commit()
    jobs.claim_job(session, job=job, worker_id="a:1")
    assert not jobs.delete_job(session, job=job)
    assert jobs.get_job(session, job_id=job.id) is not None


def test_list_jobs_pages_newest_first(session: Session) -> None:
    made = [new_job(session) for _ in range(5)]
    session.commit()
    first = jobs.list_jobs(session, limit=3)
    # limit 2, not more: on Postgres, jobs that other tests committed for real are older than these
    rest = jobs.list_jobs(session, limit=2, before=(first[-1].created_at, first[-1].id))
    assert [j.id for j in first + rest] == [
        j.id for j in sorted(made, key=lambda j: (j.created_at, j.id), reverse=True)
    ]


def test_beat_reports_loss_of_ownership(session: Session) -> None:
    job = new_job(session)
    session.commit()
    jobs.claim_job(session, job=job, worker_id="a:1")
    assert jobs.beat(session, job_id=job.id, worker_id="a:1") == JobState.RUNNING
    assert jobs.beat(session, job_id=job.id, worker_id="someone-else:2") is None


def test_reap_job_leaves_a_job_that_beat_meanwhile(session: Session) -> None:
    job = new_job(session)
    session.commit()
    jobs.claim_job(session, job=job, worker_id="a:1")
    cutoff = utcnow() - timedelta(seconds=60)
    assert not jobs.reap_job(session, job=job, heartbeat_before=cutoff, state=JobState.QUEUED)
    assert jobs.reap_job(
        session, job=job, heartbeat_before=utcnow() + timedelta(seconds=1), state=JobState.QUEUED
    )


def test_settings_default_to_embedded_sqlite_and_filesystem_broker(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    assert settings.database_url == f"sqlite:///{tmp_path.resolve() / 'corral.db'}"
    assert settings.broker_url == "filesystem://"
    assert settings.visibility_timeout_s > settings.task_time_limit_s


def test_blob_names_cannot_leave_the_job_folder(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    job_id = uuid.uuid4()
    for name in ("../x.png", "/etc/passwd", "a/b.png", ".."):
        with pytest.raises(ValueError):
            blobs.image_path(settings, job_id, name)
    assert blobs.image_path(settings, job_id, "000001.png").parent == blobs.images_dir(
        settings, job_id
    )


def test_job_ids_on_disk_lists_job_folders(tmp_path: Path, sessions: sessionmaker[Session]) -> None:
    settings = Settings(data_dir=tmp_path)
    job_id = uuid.uuid4()
    blobs.new_job_dir(settings, job_id)
    (blobs.jobs_root(settings) / "not-a-job").mkdir()
    assert blobs.job_ids_on_disk(settings) == [job_id]
    blobs.delete_job_files(settings, job_id)
    assert blobs.job_ids_on_disk(settings) == []


def test_create_job_writes_many_image_rows_that_read_back_through_the_orm(session: Session) -> None:
    """More rows than one insert batch; offsets past 32 bits and a per-file blob (None) survive."""
    n = jobs.IMAGE_BATCH + 7
    offsets: list[int | None] = [i * 300 for i in range(n - 2)] + [5 << 30, None]
    images = [FakeImage(f"a/{i:05d}.png", blobs.PACK_NAME, offset) for i, offset in enumerate(offsets)]
    job = jobs.create_job(
        session, job_id=uuid.uuid4(), params={"k": 2}, archive_format="zip", archive_entries=n,
        images=images, skipped=[],
    )
    session.commit()
    rows = jobs.list_images(session, job_id=job.id)
    assert [(r.seq, r.path, r.blob_offset) for r in rows] == [
        (i, image.path, image.blob_offset) for i, image in enumerate(images)
    ]
    assert all(isinstance(r.id, uuid.UUID) and r.id.version == 4 for r in rows)
    assert len({r.id for r in rows}) == n and {r.job_id for r in rows} == {job.id}


def test_read_image_reads_a_pack_slice_or_a_whole_file(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    job_id = uuid.uuid4()
    blobs.new_job_dir(settings, job_id)
    blobs.image_path(settings, job_id, blobs.PACK_NAME).write_bytes(b"first" + b"second" + b"third")
    blobs.image_path(settings, job_id, "000001.png").write_bytes(b"own file")
    assert blobs.read_image(settings, job_id, FakeImage("a", blobs.PACK_NAME, 5, 6)) == b"second"
    assert blobs.read_image(settings, job_id, FakeImage("b", "000001.png", None, 8)) == b"own file"
    with blobs.open_image(settings, job_id, FakeImage("c", blobs.PACK_NAME, 11, 5)) as stream:
        assert stream.read(2) == b"th" and stream.tell() == 2
        stream.seek(-1, 2)
        assert stream.read() == b"d" and stream.read() == b""
        stream.seek(0)
        assert stream.read(100) == b"third"  # never past the slice
