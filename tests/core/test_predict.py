from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.config import ClusterConfig
from core.pipeline import cluster
from core.predict import load_model, predict_files, save_model
from tests.core.conftest import striped_images


def write_pngs(folder: Path, images: np.ndarray, colour: bool = False) -> list[tuple[str, Path]]:
    files = []
    for i, image in enumerate(images):
        array = image.transpose(1, 2, 0) if image.shape[0] == 3 else image[0]
        path = folder / f"{i:03d}.png"
        Image.fromarray(array).convert("RGB" if colour else "L").save(path)
        files.append((path.name, path))
    return files


@pytest.mark.parametrize(("method", "precision"), [("kmeans", "auto"), ("mmdc", "auto"), ("imc", "auto"),
                                                   ("mmdc", "bf16"), ("imc", "bf16")])
def test_predict_saved_model_reproduces_training_labels(method: str, precision: str, tmp_path: Path) -> None:
    images, _ = striped_images(per_class=8, size=16)
    config = ClusterConfig(k=3, method=method, epochs=1, seed=0, batch_size=24, backbone="vgg",
                           precision=precision)  # type: ignore[arg-type]
    result = cluster(images, config, device="cpu")
    save_model(result, tmp_path / "model.pt")
    predictor = load_model(tmp_path / "model.pt")
    assert (predictor.image_size, predictor.channels, predictor.k) == (16, 1, 3)
    labels, confidences = predictor(images)
    assert np.array_equal(labels, result.labels)
    np.testing.assert_allclose(confidences, result.confidences, atol=1e-4)


def test_predict_files_decodes_to_the_models_size_and_channels(tmp_path: Path) -> None:
    images, _ = striped_images(per_class=6, size=16)
    result = cluster(images, ClusterConfig(k=3, method="kmeans"), device="cpu")
    save_model(result, tmp_path / "model.pt")
    big, _ = striped_images(per_class=6, size=32)  # RGB files twice the size: decoded to 1 x 16
    files = write_pngs(tmp_path, np.repeat(big.numpy(), 3, axis=1), colour=True)
    (tmp_path / "notes.txt").write_text("not an image")
    names, labels, confidences, skipped = predict_files(load_model(tmp_path / "model.pt"),
                                                        [*files, ("notes.txt", tmp_path / "notes.txt")])
    assert len(names) == 18 and skipped == [("notes.txt", "not_an_image")]
    assert set(labels.tolist()) == {0, 1, 2} and ((confidences >= 0) & (confidences <= 1)).all()
    # the three stripe classes come back as three groups of six
    assert sorted(np.bincount(labels).tolist()) == [6, 6, 6]


def test_save_model_refuses_a_predictor_less_result(tmp_path: Path) -> None:
    images, _ = striped_images(per_class=4, size=16)
    result = cluster(images, ClusterConfig(k=3, method="kmeans"), device="cpu")
    result.predictor = None
    with pytest.raises(ValueError, match="no predictor"):
        save_model(result, tmp_path / "m.pt")
    assert not (tmp_path / "m.pt").exists()


def test_the_class_paths_saved_models_pickled_still_resolve() -> None:
    """A saved model pickles its read-out by class path; the files in a service's data folder
    name these, MMDCNet among them from before it moved to core/models/mmdc_net.py."""
    from core.methods import imc, kmeans, mmdc
    from core.models.mmdc_net import MMDCNet

    assert mmdc.MMDCNet is MMDCNet
    assert (mmdc.MMDCReadout.__module__, imc.IMCReadout.__module__, kmeans.KMeansReadout.__module__) == (
        "core.methods.mmdc", "core.methods.imc", "core.methods.kmeans")
