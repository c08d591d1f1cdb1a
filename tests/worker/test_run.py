import threading
import time
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from core.result import Progress
from store import blobs, jobs, results
from store.models import JobState, utcnow
from store.queue import make_celery
from store.settings import Settings
from tests.conftest import COLOURS, png_bytes
from worker import reaper
from worker.run import JobCancelled, Monitor, execute_job


class Stored:
    def __init__(self, path: str, blob_name: str, size_bytes: int) -> None:
        self.path, self.blob_name, self.size_bytes = path, blob_name, size_bytes
        self.blob_offset: int | None = None  # one file per image, as jobs from before packs
        self.width = self.height = 16
        self.format = "PNG"


def stored_job(
    settings: Settings,
    sessions: sessionmaker[Session],
    params: dict[str, object],
    per_class: int = 8,
    broken: int = 0,
) -> uuid.UUID:
    """A queued job whose images sit in blob storage, as POST /jobs leaves it."""
    import numpy as np

    job_id = uuid.uuid4()
    blobs.new_job_dir(settings, job_id)
    rng = np.random.default_rng(0)
    images = []
    for name, rgb in COLOURS.items():
        for i in range(per_class):
            blob = f"{len(images):06d}.png"
            data = png_bytes(rgb, rng) if len(images) >= broken else b"\x89PNG\r\n\x1a\nbroken"
            blobs.image_path(settings, job_id, blob).write_bytes(data)
            images.append(Stored(f"{name}/{i:03d}.png", blob, len(data)))
    with sessions() as session, session.begin():
        jobs.create_job(
            session,
            job_id=job_id,
            params=params,
            archive_format="zip",
            archive_entries=len(images),
            images=images,
            skipped=[],
        )
    return job_id


def test_execute_job_clusters_and_writes_every_assignment(settings: Settings, sessions: sessionmaker[Session]) -> None:
    job_id = stored_job(settings, sessions, {"k": 3, "method": "kmeans"})
    assert execute_job(job_id, settings=settings, sessions=sessions) == JobState.SUCCEEDED
    with sessions() as session:
        job = jobs.get_job(session, job_id=job_id)
        assert job is not None and job.state == JobState.SUCCEEDED and job.attempts == 1
        assert job.n_clustered == 24 and job.metrics is not None
        assert job.metrics["acc"] == pytest.approx(1.0)  # three clearly separate colours
        clusters = results.list_clusters(session, job_id=job_id)
        assert sorted(c.size for c in clusters) == [8, 8, 8]
        assert len(list(results.iter_assignments(session, job_id=job_id))) == 24
    assert not blobs.checkpoint_path(settings, job_id).exists()


def test_a_budgeted_job_fits_its_epochs(settings: Settings, sessions: sessionmaker[Session]) -> None:
    params = {"k": 3, "method": "mmdc", "backbone": "vgg", "batch_size": 8, "time_budget_s": 10}
    job_id = stored_job(settings, sessions, params)
    execute_job(job_id, settings=settings, sessions=sessions)
    with sessions() as session:
        job = jobs.get_job(session, job_id=job_id)
        assert job is not None and job.state == JobState.SUCCEEDED, job and job.error
        assert job.epochs is not None and job.epochs >= 1
        assert job.timings is not None and job.timings["train"] < 10


def test_a_job_of_the_default_method_records_the_one_it_trained(
    settings: Settings, sessions: sessionmaker[Session]
) -> None:
    job_id = stored_job(settings, sessions, {"k": 3, "epochs": 1, "batch_size": 8})  # method: auto
    execute_job(job_id, settings=settings, sessions=sessions)
    with sessions() as session:
        job = jobs.get_job(session, job_id=job_id)
        assert job is not None and job.state == JobState.SUCCEEDED, job and job.error
        assert job.progress_metrics is not None and job.progress_metrics["method"] == "imc"  # colour images


def test_execute_job_twice_runs_it_once(settings: Settings, sessions: sessionmaker[Session]) -> None:
    job_id = stored_job(settings, sessions, {"k": 3, "method": "kmeans"})
    execute_job(job_id, settings=settings, sessions=sessions)
    assert execute_job(job_id, settings=settings, sessions=sessions) == "already_finished"
    assert execute_job(uuid.uuid4(), settings=settings, sessions=sessions) == "missing"


def test_execute_job_with_too_few_decodable_images_fails_clearly(
    settings: Settings, sessions: sessionmaker[Session]
) -> None:
    job_id = stored_job(settings, sessions, {"k": 3, "method": "kmeans"}, per_class=1, broken=1)
    assert execute_job(job_id, settings=settings, sessions=sessions) == JobState.FAILED
    with sessions() as session:
        job = jobs.get_job(session, job_id=job_id)
        assert job is not None and job.error is not None
        assert job.error["type"].endswith("invalid_input") and "k=3" in job.error["detail"]


def test_a_redelivered_job_of_a_dead_worker_is_claimed_again(
    settings: Settings, sessions: sessionmaker[Session]
) -> None:
    job_id = stored_job(settings, sessions, {"k": 3, "method": "kmeans"})
    with sessions() as session, session.begin():
        job = jobs.get_job(session, job_id=job_id)
        assert job is not None
        import socket

        # pid 2**22 + 1 is above Linux's pid_max, so that process is certainly gone
        jobs.claim_job(session, job=job, worker_id=f"{socket.gethostname()}:{2**22 + 1}")
    assert execute_job(job_id, settings=settings, sessions=sessions) == JobState.SUCCEEDED
    with sessions() as session:
        assert jobs.get_job(session, job_id=job_id).attempts == 2  # type: ignore[union-attr]


def test_a_live_workers_job_is_not_taken(settings: Settings, sessions: sessionmaker[Session]) -> None:
    job_id = stored_job(settings, sessions, {"k": 3, "method": "kmeans"})
    with sessions() as session, session.begin():
        job = jobs.get_job(session, job_id=job_id)
        jobs.claim_job(session, job=job, worker_id="another-host:1")  # type: ignore[arg-type]
    assert execute_job(job_id, settings=settings, sessions=sessions) == "running_elsewhere"


def test_reaper_requeues_a_silent_job_then_fails_it_after_max_attempts(
    settings: Settings, sessions: sessionmaker[Session]
) -> None:
    settings = settings.model_copy(update={"max_attempts": 2, "stale_after_s": 1.0})
    job_id = stored_job(settings, sessions, {"k": 3, "method": "kmeans"})
    celery = make_celery(settings)
    long_ago = utcnow() - timedelta(seconds=30)
    for expected_state in (JobState.QUEUED, JobState.FAILED):
        with sessions() as session, session.begin():
            job = jobs.get_job(session, job_id=job_id)
            jobs.claim_job(session, job=job, worker_id="gone-host:1", now=long_ago)  # type: ignore[arg-type]
        requeued = reaper.reap(sessions, settings, celery)
        assert (job_id in requeued) == (expected_state == JobState.QUEUED)
        with sessions() as session:
            job = jobs.get_job(session, job_id=job_id)
            assert job is not None and job.state == expected_state
    assert job.error is not None and job.error["type"].endswith("worker_lost")
    assert job.attempts == 2


def test_monitor_stops_training_when_cancelled(settings: Settings, sessions: sessionmaker[Session]) -> None:
    job_id = stored_job(settings, sessions, {"k": 3, "method": "kmeans"})
    with sessions() as session, session.begin():
        job = jobs.get_job(session, job_id=job_id)
        jobs.claim_job(session, job=job, worker_id="me:1")  # type: ignore[arg-type]
        jobs.request_cancel(session, job=job)  # type: ignore[arg-type]
    monitor = Monitor(sessions, job_id, "me:1", 0.05)
    monitor.update(Progress("clustering", 1, 5, {"loss": 1.0}))
    with monitor:
        deadline = time.monotonic() + 10
        with pytest.raises(JobCancelled):
            while time.monotonic() < deadline:
                monitor.on_progress(Progress("clustering", 1, 5, {"loss": 1.0}))
                time.sleep(0.02)
    with sessions() as session:
        job = jobs.get_job(session, job_id=job_id)
        assert job is not None and job.epoch == 1 and job.progress_metrics == {"loss": 1.0}


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite"])
def test_cancelling_a_running_mmdc_job_stops_it_before_the_last_epoch(
    settings: Settings, sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    job_id = stored_job(
        settings,
        sessions,
        {"k": 3, "method": "mmdc", "epochs": 50, "backbone": "vgg", "batch_size": 24},
    )
    outcome: list[str] = []
    runner = threading.Thread(target=lambda: outcome.append(execute_job(job_id, settings=settings, sessions=sessions)))
    runner.start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        with sessions() as session, session.begin():
            job = jobs.get_job(session, job_id=job_id)
            assert job is not None
            if job.state == JobState.RUNNING and (job.epoch or 0) >= 1:
                assert jobs.request_cancel(session, job=job)
                break
        time.sleep(0.05)
    runner.join(timeout=120)
    assert outcome == [JobState.CANCELLED]
    with sessions() as session:
        job = jobs.get_job(session, job_id=job_id)
        assert job is not None and job.state == JobState.CANCELLED and (job.epoch or 0) < 50


def test_a_bug_raising_value_error_in_training_is_a_worker_error_not_the_users(
    settings: Settings, sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Only core.errors.InvalidInput is the user's 422; any other ValueError is ours (500)."""
    from core.methods import METHODS

    def buggy_training(*args: object, **kwargs: object) -> None:
        raise ValueError("operands could not be broadcast together")  # a bug, not bad input

    monkeypatch.setitem(METHODS, "kmeans", buggy_training)
    job_id = stored_job(settings, sessions, {"k": 3, "method": "kmeans"})
    with caplog.at_level("ERROR", logger="worker.run"):
        assert execute_job(job_id, settings=settings, sessions=sessions) == JobState.FAILED
    with sessions() as session:
        job = jobs.get_job(session, job_id=job_id)
        assert job is not None and job.error is not None
        assert job.error["type"].endswith("/worker_error") and job.error["status"] == 500
        assert "ValueError: operands could not be broadcast together" in job.error["detail"]
    logged = [record for record in caplog.records if record.exc_info is not None]
    assert logged and "buggy_training" in caplog.text  # the traceback, not just the message


def test_a_reclustering_writes_its_own_result_from_the_source_embeddings(
    settings: Settings, sessions: sessionmaker[Session]
) -> None:
    source = stored_job(settings, sessions, {"k": 3, "method": "kmeans"})
    assert execute_job(source, settings=settings, sessions=sessions) == JobState.SUCCEEDED
    with sessions() as session, session.begin():
        row = jobs.get_job(session, job_id=source)
        assert row is not None
        before = [(a.image_id, a.cluster, a.confidence) for a in results.iter_assignments(session, job_id=source)]
        job_id = jobs.create_reclustering(session, source=row, k=2).id
    assert execute_job(job_id, settings=settings, sessions=sessions) == JobState.SUCCEEDED
    with sessions() as session:
        job = jobs.get_job(session, job_id=job_id)
        assert job is not None and job.k == 2 and job.n_clustered == 24 and job.metrics is not None
        assert job.timings is not None and {"load", "cluster", "model", "write", "total"} <= set(job.timings)
        assigned = list(results.iter_assignments(session, job_id=job_id))
        assert {a.cluster for a in assigned} == {0, 1} and len(assigned) == 24
        assert {a.image_id for a in assigned} == {image_id for image_id, _, _ in before}  # the same images
        assert sorted(c.size for c in results.list_clusters(session, job_id=job_id)) != [8, 8, 8]
        after = [(a.image_id, a.cluster, a.confidence) for a in results.iter_assignments(session, job_id=source)]
        assert after == before
    assert blobs.model_path(settings, job_id).is_file()
    assert not blobs.embeddings_path(settings, job_id).exists()  # it reads its source's


@pytest.mark.parametrize(("method", "width"), [
    ("mmdc", 3),  # the k-d embedding; calibration looks at the backbone's features
    ("imc", 256),  # the encoder's features; calibration looks at the unit projection
])
def test_a_deep_job_keeps_its_calibration_space_and_its_reclustering_calibrates_there(
    settings: Settings, sessions: sessionmaker[Session], method: str, width: int
) -> None:
    import numpy as np

    source = stored_job(settings, sessions, {"k": 3, "method": method, "epochs": 2, "batch_size": 8})
    assert execute_job(source, settings=settings, sessions=sessions) == JobState.SUCCEEDED
    space = np.load(blobs.calibration_space_path(settings, source))
    embeddings = np.load(blobs.embeddings_path(settings, source))
    assert space.shape[0] == embeddings.shape[0] == 24 and embeddings.shape[1] == width
    assert space.dtype == np.float32 and 3 < space.shape[1] <= 32  # projected to at most 32 axes
    with sessions() as session, session.begin():
        row = jobs.get_job(session, job_id=source)
        assert row is not None
        job_id = jobs.create_reclustering(session, source=row, k=2).id
        broken_id = jobs.create_reclustering(session, source=row, k=2).id
    assert execute_job(job_id, settings=settings, sessions=sessions) == JobState.SUCCEEDED
    assert not blobs.calibration_space_path(settings, job_id).exists()  # it reads its source's
    np.save(blobs.calibration_space_path(settings, source), space[:-1])  # a row short: not this job's
    assert execute_job(broken_id, settings=settings, sessions=sessions) == JobState.FAILED
    with sessions() as session:
        job = jobs.get_job(session, job_id=broken_id)
        assert job is not None and job.error is not None and "23 rows for 24 assignments" in job.error["detail"]


def test_a_kmeans_job_calibrates_on_its_embeddings_and_keeps_no_other_space(
    settings: Settings, sessions: sessionmaker[Session]
) -> None:
    job_id = stored_job(settings, sessions, {"k": 3, "method": "kmeans"})
    assert execute_job(job_id, settings=settings, sessions=sessions) == JobState.SUCCEEDED
    assert blobs.embeddings_path(settings, job_id).is_file()
    assert not blobs.calibration_space_path(settings, job_id).exists()


def test_a_reclustering_whose_source_lost_its_embeddings_fails_clearly(
    settings: Settings, sessions: sessionmaker[Session]
) -> None:
    source = stored_job(settings, sessions, {"k": 3, "method": "kmeans"})
    assert execute_job(source, settings=settings, sessions=sessions) == JobState.SUCCEEDED
    with sessions() as session, session.begin():
        row = jobs.get_job(session, job_id=source)
        assert row is not None
        job_id = jobs.create_reclustering(session, source=row, k=2).id
    blobs.embeddings_path(settings, source).unlink()
    assert execute_job(job_id, settings=settings, sessions=sessions) == JobState.FAILED
    with sessions() as session:
        job = jobs.get_job(session, job_id=job_id)
        assert job is not None and job.error is not None
        assert job.error["type"].endswith("invalid_input") and "embeddings" in job.error["detail"]


def test_the_worker_decodes_within_the_configured_pixel_limit(
    settings: Settings, sessions: sessionmaker[Session]
) -> None:
    job_id = stored_job(settings, sessions, {"k": 3, "method": "kmeans"})
    strict = settings.model_copy(update={"max_pixels": 16 * 16 - 1})  # each stored image is 16 x 16
    assert execute_job(job_id, settings=strict, sessions=sessions) == JobState.FAILED
    with sessions() as session:
        job = jobs.get_job(session, job_id=job_id)
        assert job is not None and job.error is not None and job.error["type"].endswith("invalid_input")
        assert "too_many_pixels" in str(job.error), job.error
