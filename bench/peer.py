"""The peer that bench/api_throughput.py measures Corral against: a bare FastAPI app.

Same paths as Corral's read routes, each one plain SQLAlchemy read of the same rows from the same
database (a pool of the same size), the row's columns returned as a dict for FastAPI to encode.
No auth, no middleware, no response model: the framework's own cost and the query's.

    CORRAL_DATABASE_URL=... uvicorn --factory bench.peer:create_peer_app
"""

from __future__ import annotations

import os
import uuid
from typing import Any

from fastapi import FastAPI, HTTPException
from sqlalchemy import create_engine, inspect, select
from sqlalchemy.orm import Session

from store.models import Cluster, Job


def create_peer_app() -> FastAPI:
    engine = create_engine(os.environ["CORRAL_DATABASE_URL"], pool_size=20, max_overflow=10)
    app = FastAPI()

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/jobs")
    def list_jobs(limit: int = 50) -> list[dict[str, Any]]:
        query = select(Job).order_by(Job.created_at.desc(), Job.id.desc()).limit(limit)
        with Session(engine) as session:
            return [_columns(job) for job in session.scalars(query)]

    @app.get("/jobs/{job_id}")
    def get_job(job_id: uuid.UUID) -> dict[str, Any]:
        with Session(engine) as session:
            job = session.get(Job, job_id)
            if job is None:
                raise HTTPException(404)
            return _columns(job)

    @app.get("/jobs/{job_id}/clusters")
    def list_clusters(job_id: uuid.UUID) -> list[dict[str, Any]]:
        query = select(Cluster).where(Cluster.job_id == job_id).order_by(Cluster.cluster)
        with Session(engine) as session:
            return [_columns(row) for row in session.scalars(query)]

    return app


def _columns(row: object) -> dict[str, Any]:
    return {attr.key: getattr(row, attr.key) for attr in inspect(row).mapper.column_attrs}
