import csv
import io
import json
import uuid
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from core.cli import main
from store.models import Job as JobRow
from store.settings import Settings
from tests.conftest import make_zip
from worker.run import execute_job

pytestmark = pytest.mark.parametrize("backend", ["sqlite"])  # the worker's heartbeat thread commits


def corral(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_submit_status_jobs_and_results_against_a_real_server(
    server: str, settings: Settings, sessions: sessionmaker[Session], tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    archive = tmp_path / "colours.zip"
    archive.write_bytes(make_zip(per_class=5))
    code, out, _ = corral(capsys, "submit", str(archive), "--k", "3", "--method", "kmeans",
                          "--name", "colours", "--server", server)
    assert code == 0
    job_id = out.strip()
    assert execute_job(uuid.UUID(job_id), settings=settings, sessions=sessions) == "succeeded"

    code, out, _ = corral(capsys, "status", job_id, "--server", server)
    assert code == 0 and f"job {job_id} (colours): succeeded" in out
    assert out.count("5 images, mean confidence") == 3 and "ACC 1.0000" in out

    code, out, _ = corral(capsys, "jobs", "--server", server)
    assert code == 0 and job_id in out and "succeeded" in out and "kmeans" in out

    code, out, _ = corral(capsys, "results", job_id, "--format", "csv", "--server", server)
    rows = list(csv.DictReader(io.StringIO(out)))
    assert code == 0 and len(rows) == 15 and {r["cluster"] for r in rows} == {"0", "1", "2"}
    target = tmp_path / "out.jsonl"
    code, _, _ = corral(capsys, "results", job_id, "--format", "jsonl", "--out", str(target), "--server", server)
    assert code == 0 and len([json.loads(line) for line in target.read_text().splitlines()]) == 15


def test_server_errors_print_their_one_line_detail_and_exit_1(
    server: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    archive = tmp_path / "notes.zip"
    archive.write_bytes(b"not an archive at all")
    code, out, err = corral(capsys, "submit", str(archive), "--k", "3", "--server", server)
    assert code == 1 and out == "" and err.startswith("corral: error: 415: ") and err.count("\n") == 1

    code, _, err = corral(capsys, "status", str(uuid.uuid4()), "--server", server)
    assert code == 1 and "404: no job with id" in err
    code, _, err = corral(capsys, "results", str(uuid.uuid4()), "--server", server)
    assert code == 1 and "404: no job with id" in err
    code, _, err = corral(capsys, "jobs", "--server", "http://127.0.0.1:9")
    assert code == 1 and "cannot reach http://127.0.0.1:9" in err



def test_submit_without_k_then_recluster_at_another_k(
    server: str, settings: Settings, sessions: sessionmaker[Session], tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    archive = tmp_path / "colours.zip"
    archive.write_bytes(make_zip(per_class=5))
    code, out, _ = corral(capsys, "submit", str(archive), "--k", "auto", "--k-max", "5", "--method", "kmeans",
                          "--server", server)
    assert code == 0
    job_id = out.strip()
    assert execute_job(uuid.UUID(job_id), settings=settings, sessions=sessions) == "succeeded"
    code, out, _ = corral(capsys, "status", job_id, "--server", server)
    assert code == 0 and "k chosen by" in out and "from 2..5" in out
    assert "scored highest" not in out  # k-means takes the highest score: no note
    with sessions() as session, session.begin():  # a choice that kept a lower-scoring k, as IMC-SwAV's can
        stored = session.get(JobRow, uuid.UUID(job_id))
        assert stored is not None and stored.k_selection is not None
        stored.k_selection = {**stored.k_selection, "note": "k = 2 scored highest, but the classifier was kept"}
    code, out, _ = corral(capsys, "status", job_id, "--server", server)
    assert code == 0 and "\n  k = 2 scored highest, but the classifier was kept\n" in out

    code, out, _ = corral(capsys, "recluster", job_id, "--k", "2", "--server", server)
    assert code == 0
    again = out.strip()
    assert execute_job(uuid.UUID(again), settings=settings, sessions=sessions) == "succeeded"
    code, out, _ = corral(capsys, "status", again, "--server", server)
    assert code == 0 and f"re-clustering of {job_id}" in out and "15 images -> 2 clusters" in out
    code, out, _ = corral(capsys, "status", job_id, "--server", server)
    assert f"re-clustered at k=2: {again} (succeeded)" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["recluster", "JOB", "--k", "1"], "expected an integer from 2 to 1000"),
        (["recluster", "JOB", "--k", "many"], "expected an integer from 2 to 1000"),
        (["recluster", "JOB"], "--k"),
        (["submit", "a.zip", "--k", "0"], "expected an integer from 2 to 1000"),
    ],
)
def test_bad_k_on_the_command_line_is_one_line_and_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str], settings: Settings
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    err = capsys.readouterr().err
    assert exited.value.code == 2 and message in err


def test_recluster_errors_print_their_detail(server: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = corral(capsys, "recluster", str(uuid.uuid4()), "--k", "3", "--server", server)
    assert code == 1 and "404: no job with id" in err and err.count("\n") == 1
    code, _, err = corral(capsys, "recluster", str(uuid.uuid4()), "--k", "auto", "--server", server)
    assert code == 1 and "needs a number for --k" in err
