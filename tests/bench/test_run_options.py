import pytest

from bench.run import with_overrides
from core import ClusterConfig


def test_overrides_take_json_values_and_comma_tuples():
    config = with_overrides(ClusterConfig(k=10), ["imc.lr=0.002", "imc.high_scale=0.4,1.0", "imc.flip=false",
                                                  "mmdc.refine_start=0.3", "imc.prototypes=300"])
    assert (config.imc.lr, config.imc.high_scale, config.imc.flip) == (0.002, (0.4, 1.0), False)
    assert (config.mmdc.refine_start, config.imc.prototypes) == (0.3, 300)


@pytest.mark.parametrize(("item", "message"), [
    ("foo.lr=1", "not a method parameter"),
    ("imc.nope=1", "not a method parameter"),
    ("imc.lr=abc", "write the value as JSON"),
])
def test_bad_overrides_name_the_problem(item, message):
    with pytest.raises(ValueError, match=message):
        with_overrides(ClusterConfig(k=10), [item])


def test_a_budgeted_run_stops_at_an_epoch_end_and_the_next_run_continues(tmp_path):
    """The GPU-slice workflow: each command trains what fits its budget, then writes the partial curve."""
    import json

    import numpy as np
    import torch

    from bench.run import main

    rng = np.random.default_rng(0)
    colours = np.array([[220, 30, 30], [30, 220, 30], [30, 30, 220]], dtype=np.int16)
    labels = np.repeat(np.arange(3), 8)
    images = np.clip(colours[labels][:, None, None, :] + rng.integers(-20, 20, (24, 32, 32, 3)), 0, 255)
    (tmp_path / "cifar-10").mkdir()
    np.savez(tmp_path / "cifar-10" / "test.npz", images=images.astype(np.uint8), labels=labels)
    out, checkpoint = tmp_path / "run.json", tmp_path / "run.pt"
    args = ["--dataset", "cifar10", "--data", str(tmp_path), "--split", "test", "--k", "3", "--method", "mmdc",
            "--epochs", "3", "--batch-size", "12", "--device", "auto", "--checkpoint", str(checkpoint),
            "--budget-seconds", "0.001", "--out", str(out)]
    main(args)
    first = json.loads(out.read_text())
    resolved = "cuda" if torch.cuda.is_available() else "cpu"  # what "auto" picked, not "auto"
    assert (first["partial"], first["epochs"], first["resumed_from_epoch"], first["device"]) == (True, 1, 0, resolved)
    main(args)
    second = json.loads(out.read_text())
    assert (second["partial"], second["epochs"], second["resumed_from_epoch"]) == (True, 2, 1)
    main(args)  # the last epoch ends the schedule: a full result, scored
    last = json.loads(out.read_text())
    assert (last["partial"], last["epochs"], last["resumed_from_epoch"]) == (False, 3, 2)
    assert 0.0 <= last["acc"] <= 1.0


def test_holdout_scores_a_split_the_run_never_saw(tmp_path):
    """IMC-SwAV's CIFAR-10 figure: train on the train split, label the test split with the model."""
    import json

    import numpy as np

    from bench.run import main

    rng = np.random.default_rng(1)
    colours = np.array([[220, 30, 30], [30, 220, 30], [30, 30, 220]], dtype=np.int16)
    (tmp_path / "cifar-10").mkdir()
    for name, n in (("train-00", 8), ("test", 5)):
        labels = np.repeat(np.arange(3), n)
        images = np.clip(colours[labels][:, None, None, :] + rng.integers(-20, 20, (3 * n, 32, 32, 3)), 0, 255)
        np.savez(tmp_path / "cifar-10" / f"{name}.npz", images=images.astype(np.uint8), labels=labels)
    out = tmp_path / "run.json"
    main(["--dataset", "cifar10", "--data", str(tmp_path), "--split", "train", "--holdout", "test", "--k", "3",
          "--method", "imc", "--epochs", "1", "--batch-size", "12", "--out", str(out)])
    report = json.loads(out.read_text())
    assert (report["images"], report["holdout"]["split"], report["holdout"]["images"]) == (24, "test", 15)
    assert 0.0 <= report["holdout"]["acc"] <= 1.0 and set(report["holdout"]) >= {"nmi", "ari"}


def test_holdout_must_be_the_other_split(tmp_path, capsys):
    from bench.run import main

    with pytest.raises(SystemExit):
        main(["--dataset", "cifar10", "--split", "test", "--holdout", "test", "--out", str(tmp_path / "x.json")])
    assert "the split trained on" in capsys.readouterr().err
