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
