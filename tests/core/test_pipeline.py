from core.config import ClusterConfig
from core.models.backbones import choose_backbone
from core.pipeline import cluster
from tests.core.conftest import striped_images


def test_auto_backbone_is_the_small_vgg_for_small_colour_images_on_a_cpu_and_is_recorded():
    colour, _ = striped_images(per_class=4, colour=True)
    result = cluster(colour, ClusterConfig(k=3, method="imc", epochs=1, batch_size=6), device="cpu")
    assert result.config.backbone == "vgg"
    assert choose_backbone("auto", 3, 32) == "resnet18"  # off a CPU: the reference's network
    assert choose_backbone("auto", 3, 64, cpu=True) == "resnet18"  # larger than the VGG is made for
    assert choose_backbone("resnet18", 3, 32, cpu=True) == "resnet18"  # a given backbone wins
