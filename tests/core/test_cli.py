import csv
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from core.cli import main
from tests.core.conftest import striped_images


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    pixels, labels = striped_images(per_class=10)
    root = tmp_path / "images"
    for i, (array, label) in enumerate(zip(pixels.numpy(), labels, strict=True)):
        (root / f"class{label}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(array[0]).save(root / f"class{label}" / f"{i:03d}.png")
    (root / "class0" / "zz-broken.png").write_bytes(b"oops")
    return root


def test_cluster_command_writes_csv_and_scores_against_folders(image_folder: Path, tmp_path: Path, capsys):
    out = tmp_path / "result.csv"
    code = main(["cluster", str(image_folder), "--k", "3", "--method", "kmeans", "--out", str(out), "--quiet"])
    assert code == 0
    captured = capsys.readouterr()
    assert "ACC 1.0000" in captured.out
    assert "skipped class0/zz-broken.png: unreadable_image" in captured.err
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 30 and set(rows[0]) == {"path", "cluster", "confidence"}
    assert rows[0]["path"] == "class0/000.png"


def test_cluster_command_trains_mmdc_with_a_progress_bar(image_folder: Path, capsys):
    assert main(["cluster", str(image_folder), "--k", "3", "--epochs", "1", "--batch-size", "10"]) == 0
    captured = capsys.readouterr()
    assert "epoch 1/1" in captured.err
    assert " by mmdc on " in captured.out  # the default, auto: one epoch is too short for IMC-SwAV


def test_cluster_command_takes_the_backbone(tmp_path: Path, capsys):
    pixels, _ = striped_images(per_class=4, colour=True)
    folder, checkpoint = tmp_path / "images", tmp_path / "run.ckpt"
    folder.mkdir()
    for i, array in enumerate(pixels.numpy()):
        Image.fromarray(array.transpose(1, 2, 0)).save(folder / f"{i}.png")
    args = ["cluster", str(folder), "--k", "3", "--epochs", "1", "--backbone", "vgg", "--checkpoint", str(checkpoint)]
    assert main([*args, "--quiet"]) == 0
    assert " by imc on " in capsys.readouterr().out  # auto on colour images
    assert torch.load(checkpoint, weights_only=False)["config"]["backbone"] == "vgg"


@pytest.mark.parametrize("k", [["--k", "auto"], []])
def test_cluster_command_chooses_k_when_it_is_auto_or_omitted(image_folder: Path, capsys, k):
    assert main(["cluster", str(image_folder), *k, "--k-max", "6", "--method", "kmeans", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "30 images -> 3 clusters" in out and "k=3 chosen by the silhouette score, the best of k = 2..6" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--k", "1"], "k=1 is out of range"), (["--k", "50"], "k=50 exceeds the 30 images"),
     (["--k-max", "1"], "k_max=1 is out of range"),
     (["--k", "3", "--k-max", "6"], "--k-max applies only when k is chosen")],
)
def test_bad_arguments_exit_non_zero_with_one_line(image_folder: Path, capsys, args, message):
    assert main(["cluster", str(image_folder), *args, "--method", "kmeans", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


@pytest.mark.parametrize(("time", "message"), [("5", "time_budget_s=5.0 is out of range"),
                                              ("-1m", "is not a duration"), ("10x", "is not a duration")])
def test_a_bad_time_budget_exits_2_with_one_line(image_folder: Path, capsys, time, message):
    try:
        code = main(["cluster", str(image_folder), "--k", "3", f"--time={time}", "--quiet"])
    except SystemExit as exited:  # argparse's own refusal of what is not a duration
        code = exited.code
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_empty_or_missing_input_exits_non_zero(tmp_path: Path, capsys):
    assert main(["cluster", str(tmp_path), "--k", "3"]) == 2
    assert main(["cluster", str(tmp_path / "missing.zip"), "--k", "3"]) == 2
    assert "Traceback" not in capsys.readouterr().err


def test_a_k_that_is_not_a_number_exits_2(image_folder: Path, capsys):
    with pytest.raises(SystemExit) as exited:
        main(["cluster", str(image_folder), "--k", "many"])
    assert exited.value.code == 2 and "'many' is not a number of clusters" in capsys.readouterr().err


def test_console_script_is_installed(image_folder: Path):
    done = subprocess.run([sys.executable, "-m", "core.cli", "cluster", str(image_folder), "--k", "3",
                           "--method", "unknown"], capture_output=True, text=True)
    assert done.returncode == 2 and "invalid choice" in done.stderr
