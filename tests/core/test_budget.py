import math
import time

import pytest
import torch

from core.budget import SAFETY, Deadline, fit_epochs, parse_duration
from core.config import ClusterConfig
from core.errors import InvalidInput
from core.methods import imc_plan
from core.pacing import AUTO_MIN_IMC_STEPS, PROBE_MAX_BUDGET_SHARE, budget_of, fastest_threads, pace
from core.pipeline import cluster
from core.runtime import cpu_threads
from tests.core.conftest import striped_images

CPU = torch.device("cpu")


@pytest.mark.parametrize(("text", "seconds"), [("600", 600), ("90s", 90), ("10m", 600), ("1h", 3600),
                                               ("1.5h", 5400), (" 2 min ", 120), ("45S", 45)])
def test_parse_duration_reads_seconds_minutes_and_hours(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "-5", "10x", "m", "1h30m", "nan", "inf"])
def test_parse_duration_refuses_anything_else_naming_the_forms(text):
    with pytest.raises(InvalidInput, match="90s, 10m, 1h"):
        parse_duration(text)


def test_fit_epochs_fills_the_safe_share_of_what_is_left():
    plan = fit_epochs(100.0, 10.0, 3.0, max_epochs=1000)
    assert plan.epochs == math.floor(90 * SAFETY / 3)
    assert plan.expected_s == pytest.approx(10 + plan.epochs * 3) and plan.expected_s <= 100
    assert fit_epochs(100.0, 10.0, 3.0, max_epochs=7).epochs == 7  # capped


def test_fit_epochs_refuses_a_budget_without_room_for_one_epoch_and_names_one_that_has():
    with pytest.raises(InvalidInput, match=r"time_budget_s=20 is too short.*at least (\d+) s") as error:
        fit_epochs(20.0, 5.0, 30.0, max_epochs=50, what="mmdc on these 10 images")
    needed = int(str(error.value).split("at least ")[1].split()[0])
    assert fit_epochs(float(needed), 5.0, 30.0, max_epochs=50).epochs == 1


def test_deadline_stops_before_an_epoch_that_would_end_past_it():
    now = [0.0]
    deadline = Deadline(at=10.0, clock=lambda: now[0])
    started = []
    while deadline.room_for_epoch():
        started.append(now[0])
        now[0] += 3.0  # each epoch takes 3 s
    assert started == [0.0, 3.0, 6.0]  # a fourth would end at 12 > 10


@pytest.mark.parametrize("budget", [-1.0, 0.0, 9.0, float("nan"), float("inf"), 1e9])
def test_config_refuses_negative_tiny_or_absurd_budgets(budget):
    with pytest.raises(ValueError, match="time_budget_s"):
        ClusterConfig(k=3, time_budget_s=budget).validate()


def test_given_epochs_win_over_the_budget_and_kmeans_has_none():
    assert budget_of(ClusterConfig(k=3, epochs=4, time_budget_s=60), CPU) is None
    assert budget_of(ClusterConfig(k=3, method="kmeans", time_budget_s=60), CPU) is None
    assert budget_of(ClusterConfig(k=3, time_budget_s=60), CPU) == (60, 10_000)
    assert budget_of(ClusterConfig(k=3, method="mmdc"), CPU) == (600, 50)  # a CPU's default


def test_pace_fits_epochs_from_a_probe_of_the_real_method(images):
    pixels, _ = images
    started = time.perf_counter()
    paced = pace(pixels, ClusterConfig(k=3, method="mmdc", batch_size=16, time_budget_s=30), CPU, started=started)
    assert paced.plan is not None and paced.deadline is not None
    assert paced.config.epochs == paced.plan.epochs >= 1
    assert paced.plan.seconds_per_epoch > 0 and paced.deadline.at == started + 30


def test_budgeted_cluster_reports_its_plan_and_keeps_to_it(images):
    pixels, labels = images
    reports = []
    result = cluster(pixels, ClusterConfig(k=3, method="mmdc", batch_size=16, time_budget_s=10), labels=labels,
                     device="cpu", on_progress=reports.append)
    assert reports[0].stage == "probe"
    planned = result.config.epochs
    assert planned is not None and 1 <= len(result.history) <= planned
    trained = [r for r in reports if r.stage not in ("probe", "done")]
    assert all(r.epochs == planned and "eta_s" in r.metrics and r.metrics["time_budget_s"] == 10 for r in trained)
    assert result.timings["train"] < 10


def test_the_probe_times_one_thread_beside_more_and_the_run_restores_them(images):
    pixels, _ = images
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        seconds, threads = fastest_threads(pixels, ClusterConfig(k=3, method="mmdc", batch_size=16), CPU)
        assert seconds > 0 and threads in (1, 2)
        assert torch.get_num_threads() == 2
        with cpu_threads(1):
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_auto_trains_imc_where_its_plan_has_the_steps_and_mmdc_where_it_has_not(images):
    pixels, _ = images  # 90 grey images: one IMC-SwAV step an epoch
    steps = imc_plan.make_plan(ClusterConfig(k=3, method="imc"), 90, 1, 32).steps_per_epoch
    enough = -(-AUTO_MIN_IMC_STEPS // steps)
    for epochs, method in [(enough, "imc"), (enough - 1, "mmdc")]:
        paced = pace(pixels, ClusterConfig(k=3, epochs=epochs), CPU, started=time.perf_counter())
        assert (paced.config.method, paced.config.epochs, paced.plan) == (method, epochs, None)
    colour, _ = striped_images(per_class=10, colour=True)
    assert pace(colour, ClusterConfig(k=3, epochs=2), CPU, started=time.perf_counter()).config.method == "imc"
    assert ClusterConfig(k=3).method == "auto"


def test_a_short_auto_run_trains_mmdc_says_so_and_resumes_with_it(images, tmp_path):
    pixels, labels = images
    # IMC-SwAV would fit a few dozen steps; the backbone as cluster() settles it, since pace() is called directly
    config = ClusterConfig(k=3, batch_size=16, time_budget_s=10, backbone="vgg")
    reports = []
    result = cluster(pixels, config, labels=labels, device="cpu", on_progress=reports.append,
                     checkpoint=tmp_path / "run.ckpt")
    assert result.config.method == "mmdc" and result.config.epochs is not None
    assert [r.method for r in reports if r.stage == "probe"] == ["imc", "mmdc"]
    assert {r.method for r in reports if r.stage != "probe"} == {"mmdc"}
    resumed = pace(pixels, config, CPU, started=time.perf_counter(), checkpoint=tmp_path / "run.ckpt")
    assert (resumed.config.method, resumed.config.epochs) == ("mmdc", result.config.epochs)
    assert resumed.plan is not None and math.isnan(resumed.plan.seconds_per_epoch)  # no probe again


@pytest.mark.parametrize("method", ["mmdc", "imc", "auto"])
def test_a_probe_past_its_share_of_the_budget_ends_as_too_short(images, method):
    pixels, _ = images
    config = ClusterConfig(k=3, method=method, batch_size=16, time_budget_s=60)
    started = time.perf_counter() - 60 * PROBE_MAX_BUDGET_SHARE  # as if set-up had spent that share
    too_short = r"time_budget_s=60 is too short: measuring the speed of \w+ .* took more than 50%"
    with pytest.raises(InvalidInput, match=too_short):
        pace(pixels, config, CPU, started=started)
