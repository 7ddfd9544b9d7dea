"""EfficientNetV2 (Tan & Le, ICML 2021): sizes, timm parity, block details, padding, drop path.

Reference numbers are the ``[count]`` values of architectures.md §2.7.
"""

import pytest

from moderncnn.analysis.complexity import build_meta, count_gmacs, count_params

# name suffix: (exact params, GMACs, at size)  -- architectures.md §2.7 (GMACs at the eval size)
REFERENCE_SIZES = {
    "s": (21_458_488, 8.37, 384),
    "m": (54_139_356, 24.58, 480),
    "l": (118_515_272, 56.08, 480),
    "xl": (208_119_808, 93.35, 512),
    "b0": (7_139_704, 0.718, 224),
    "b1": (8_141_052, 1.197, 240),
    "b2": (10_096_086, 1.698, 260),
    "b3": (14_358_406, 3.011, 300),
}
ALL_NAMES = [p + s for s in REFERENCE_SIZES for p in ("efficientnetv2_", "tf_efficientnetv2_")]
BIG = ("m", "l", "xl")  # counting MACs of these on the meta device takes seconds each


def _size_params(names):
    return [pytest.param(n, marks=pytest.mark.slow) if n.rsplit("_", 1)[1] in BIG else n for n in names]


@pytest.mark.parametrize("name", ALL_NAMES)
def test_params_match_reference(name):
    assert count_params(build_meta(name)) == REFERENCE_SIZES[name.rsplit("_", 1)[1]][0]


@pytest.mark.parametrize("name", _size_params(ALL_NAMES))
def test_gmacs_match_reference(name):
    _, gmacs, size = REFERENCE_SIZES[name.rsplit("_", 1)[1]]
    assert count_gmacs(build_meta(name), size) == pytest.approx(gmacs, rel=0.01)


def test_s_gmacs_at_train_size():
    # §2.7: V2-S is 5.31 GMACs at its 300 px train size
    assert count_gmacs(build_meta("tf_efficientnetv2_s"), 300) == pytest.approx(5.31, rel=0.01)
