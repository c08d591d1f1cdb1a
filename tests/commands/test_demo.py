from datetime import UTC, datetime, timedelta

from commands.demo import Row, print_table, update


def job(state: str, **progress: object) -> dict[str, object]:
    base = {"stage": None, "epoch": None, "epochs": None, "expected_end_at": None}
    return {"state": state, "progress": base | progress, "metrics": {"acc": 0.95, "nmi": 0.9},
            "timings": {"total": 99.5}}


def test_a_running_budgeted_job_shows_its_epoch_and_the_time_left():
    row = Row("IMC-SwAV", "/jobs/1")
    end = (datetime.now(UTC) + timedelta(seconds=60)).isoformat()
    update(row, job("running", stage="clustering", epoch=3, epochs=28, expected_end_at=end))
    assert row.line.startswith("clustering 3/28, ") and row.line.endswith(" s left")


def test_finished_jobs_print_side_by_side_with_their_pages(capsys):
    rows = [Row("k-means (pixels)", "/jobs/a"), Row("IMC-SwAV", "/jobs/b")]
    for row in rows:
        update(row, job("succeeded"))
    print_table(rows, "http://127.0.0.1:8000")
    out = capsys.readouterr().out
    assert out.count("0.950  0.900   99.5 s") == 2
    assert "http://127.0.0.1:8000/ui/jobs/b" in out


def test_an_auto_job_is_named_after_the_method_it_settled_on():
    row = Row("auto", "/jobs/1", "auto")
    update(row, job("running", stage="probe", method=None))
    assert row.name == "auto"
    update(row, job("running", stage="clustering", epoch=1, epochs=9, method="mmdc"))
    assert row.name == "MMDC (auto)"
