import uuid

from sqlalchemy.orm import Session

from store import jobs, results
from tests.store.test_jobs import new_job


def test_write_results_stores_assignments_and_cluster_summaries(session: Session) -> None:
    job = new_job(session, n=6)
    session.commit()
    images = jobs.list_images(session, job_id=job.id)
    results.write_results(
        session,
        job_id=job.id,
        images=images,
        labels=[0, 0, 1, 1, 1, 0],
        confidences=[0.9, 0.5, 0.8, 0.7, 0.95, 0.6],
        k=3,
    )
    session.commit()
    clusters = results.list_clusters(session, job_id=job.id)
    assert [(c.cluster, c.size) for c in clusters] == [(0, 3), (1, 3), (2, 0)]
    assert clusters[1].representatives[0]["confidence"] == 0.95
    rows = results.list_assignments(session, job_id=job.id, after_seq=None, limit=4)
    assert [r.seq for r in rows] == [0, 1, 2, 3]
    rest = results.list_assignments(session, job_id=job.id, after_seq=rows[-1].seq, limit=4)
    assert [r.seq for r in rest] == [4, 5]
    assert len(list(results.iter_assignments(session, job_id=job.id, batch=4))) == 6


def test_cluster_members_page_by_confidence(session: Session) -> None:
    job = new_job(session, n=5)
    session.commit()
    images = jobs.list_images(session, job_id=job.id)
    results.write_results(
        session,
        job_id=job.id,
        images=images,
        labels=[0] * 5,
        confidences=[0.5, 0.9, 0.5, 0.7, 0.1],
        k=2,
    )
    first = results.list_cluster_members(session, job_id=job.id, cluster=0, after=None, limit=3)
    last = first[-1]
    rest = results.list_cluster_members(
        session, job_id=job.id, cluster=0, after=(last.confidence, last.seq), limit=3
    )
    assert [(r.confidence, r.seq) for r in first + rest] == [
        (0.9, 1),
        (0.7, 3),
        (0.5, 0),
        (0.5, 2),
        (0.1, 4),
    ]
    assert results.get_cluster(session, job_id=uuid.uuid4(), cluster=0) is None


def test_job_clusters_reads_the_job_and_its_clusters_at_once(session: Session) -> None:
    job = new_job(session, n=4)
    session.commit()
    assert results.job_clusters(session, job_id=uuid.uuid4()) is None
    bare = results.job_clusters(session, job_id=job.id)
    assert bare is not None and bare.clusters == [] and bare.state == job.state
    images = jobs.list_images(session, job_id=job.id)
    results.write_results(
        session, job_id=job.id, images=images, labels=[1, 0, 1, 1],
        confidences=[0.5, 0.9, 0.7, 0.6], k=3,
    )
    session.commit()
    found = results.job_clusters(session, job_id=job.id)
    assert found is not None and (found.id, found.owner_id) == (job.id, job.owner_id)
    assert [(row.cluster, row.size) for row in found.clusters] == [(0, 1), (1, 3), (2, 0)]
    assert found.clusters[1].representatives[0]["confidence"] == 0.7
