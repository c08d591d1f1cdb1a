"""The reaper's second pass (queued jobs whose run message the broker lost are sent again), and
its thread's truce with the forks of the process it runs in."""

import os
import signal
import sqlite3
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from store import queue
from store.models import Job, utcnow
from store.settings import Settings
from tests.worker.test_run import stored_job
from worker import reaper


def age(sessions: sessionmaker[Session], job_id: uuid.UUID, seconds: float) -> None:
    with sessions() as session, session.begin():
        session.execute(
            update(Job).where(Job.id == job_id).values(updated_at=utcnow() - timedelta(seconds=seconds))
        )


def take_message(settings: Settings) -> uuid.UUID | None:
    """A worker SIGKILLed right after taking the message: it is out of the queue for good.

    (Acked here because a clean close would restore it; a SIGKILL restores nothing.)
    """
    with queue.broker_connection(settings) as connection:
        message = connection.SimpleQueue(settings.queue_name).get(timeout=5)
        message.ack()
        return uuid.UUID(message.payload[0][0])  # [args, kwargs, embed]


def test_pending_job_ids_reads_the_filesystem_queue(settings: Settings) -> None:
    job_id = uuid.uuid4()
    queue.enqueue_job(queue.make_celery(settings), settings, job_id)
    assert queue.pending_job_ids(settings) == {job_id}
    assert take_message(settings) == job_id
    assert queue.pending_job_ids(settings) == set()


def test_a_queued_job_whose_message_was_taken_and_lost_is_sent_again_once(
    settings: Settings, sessions: sessionmaker[Session]
) -> None:
    settings = settings.model_copy(update={"resend_queued_after_s": 60.0})
    job_id = stored_job(settings, sessions, {"k": 3, "method": "kmeans"})
    celery = queue.make_celery(settings)
    queue.enqueue_job(celery, settings, job_id)
    assert reaper.resend_lost(sessions, settings, celery) == []  # young: left alone
    age(sessions, job_id, 120)
    assert reaper.resend_lost(sessions, settings, celery) == []  # its message is waiting
    assert take_message(settings) == job_id  # ... and now it is gone with a dead worker
    assert reaper.resend_lost(sessions, settings, celery) == [job_id]
    assert queue.pending_job_ids(settings) == {job_id}
    assert reaper.resend_lost(sessions, settings, celery) == []  # touched: not sent twice


def test_a_job_that_left_the_queue_is_not_sent_again(
    settings: Settings, sessions: sessionmaker[Session]
) -> None:
    settings = settings.model_copy(update={"resend_queued_after_s": 60.0})
    job_id = stored_job(settings, sessions, {"k": 3, "method": "kmeans"})
    celery = queue.make_celery(settings)
    with sessions() as session, session.begin():
        session.execute(update(Job).where(Job.id == job_id).values(state="cancelled"))
    age(sessions, job_id, 120)
    assert reaper.resend_lost(sessions, settings, celery) == []
    assert queue.pending_job_ids(settings) == set()


def test_a_lost_reclustering_is_sent_again_to_its_own_queue(
    settings: Settings, sessions: sessionmaker[Session]
) -> None:
    from store import jobs
    from worker.run import execute_job

    settings = settings.model_copy(update={"resend_queued_after_s": 60.0})
    source = stored_job(settings, sessions, {"k": 3, "method": "kmeans"})
    assert execute_job(source, settings=settings, sessions=sessions) == "succeeded"
    with sessions() as session, session.begin():
        row = jobs.get_job(session, job_id=source)
        assert row is not None
        job_id = jobs.create_reclustering(session, source=row, k=2).id
    age(sessions, job_id, 120)
    celery = queue.make_celery(settings)
    assert reaper.resend_lost(sessions, settings, celery) == [job_id]
    assert queue.pending_job_ids(settings) == {job_id}
    with queue.broker_connection(settings) as connection:
        assert connection.SimpleQueue(settings.queue_name).qsize() == 0  # not behind training jobs
        message = connection.SimpleQueue(settings.recluster_queue_name).get(timeout=5)
        assert message.headers["task"] == queue.RECLUSTER_JOB
        assert uuid.UUID(message.payload[0][0]) == job_id
        message.ack()


def fork_and_connect(database: Path) -> bool:
    """Fork a child that opens the SQLite database, as a job child's claim does first; whether it
    finished (a child that inherited one of SQLite's mutexes held waits on it forever)."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            signal.signal(signal.SIGALRM, signal.SIG_DFL)  # not pytest-timeout's Python handler,
            signal.alarm(3)  # which a thread stuck in C never runs: a hung child dies of SIGALRM
            sqlite3.connect(database).close()
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_fork_never_lands_inside_a_reaper_pass(settings: Settings, tmp_path: Path) -> None:
    database = tmp_path / "fork.db"
    passes = 0

    def open_and_close(sessions: sessionmaker[Session], settings: Settings, celery: object) -> None:
        """A pass that keeps SQLite busy opening connections, as the worker's NullPool does."""
        nonlocal passes
        for _ in range(20):
            sqlite3.connect(database).close()
        passes += 1

    fast = settings.model_copy(update={"reaper_interval_s": 1e-4})
    stop = reaper.start_reaper(sessions=None, settings=fast, celery=None, passes=[open_and_close])  # type: ignore[arg-type]
    try:
        before = passes
        # Without the guard, 3 runs of 4 had a child hang, after 3 to 12 forks (2-core machine).
        forks = 0
        while forks < 100 and fork_and_connect(database):
            forks += 1
        assert passes > before  # the passes really ran between the forks
    finally:
        stop.set()
    assert forks == 100, f"the child of fork {forks + 1} hung"
