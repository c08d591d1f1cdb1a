import pytest

from core.config import ClusterConfig


def test_round_trip_through_dict():
    config = ClusterConfig(k=5, method="imc", epochs=3)
    assert ClusterConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize(
    ("changes", "message"),
    [({"k": 1}, "k=1"), ({"k": 1001}, "k=1001"), ({"method": "dbscan"}, "method='dbscan'"),
     ({"k_max": 1}, "k_max=1"), ({"k_max": 1001}, "k_max=1001"), ({"epochs": 0}, "epochs=0"),
     ({"batch_size": 1}, "batch_size=1"), ({"image_size": 8}, "image_size=8")],
)
def test_validate_names_the_parameter(changes, message):
    with pytest.raises(ValueError, match=message):
        ClusterConfig(**{"k": 3, **changes}).validate()


def test_k_above_image_count_names_the_fix():
    with pytest.raises(ValueError, match="k=12 exceeds the 10 images"):
        ClusterConfig(k=12).validate(n_images=10)


def test_unknown_fields_are_refused():
    with pytest.raises(ValueError, match="unknown config field"):
        ClusterConfig.from_dict({"k": 3, "epoch": 4})


def test_k_omitted_round_trips_and_validates():
    config = ClusterConfig(k_max=20)
    assert config.k is None and ClusterConfig.from_dict(config.to_dict()) == config
    config.validate(n_images=5)  # k_max above the image count is capped, not refused


def test_k_max_is_capped_at_the_image_count():
    assert ClusterConfig().k_max_for(1000) == 50
    assert ClusterConfig(k_max=30).k_max_for(12) == 12
