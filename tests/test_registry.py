import pytest
import torch

import moderncnn
from moderncnn import ConfigError, InputShapeError, UnknownModelError, create_model, list_models


def test_list_models_pattern_and_sorting():
    names = list_models("convnext_*")
    assert names == sorted(names)
    assert "convnext_tiny" in names and all(n.startswith("convnext_") for n in names)
    assert list_models("no_such_*") == []


def test_unknown_model_suggests_close_names():
    with pytest.raises(UnknownModelError) as exc:
        create_model("convnext_tinny")
    assert "convnext_tiny" in str(exc.value)


def test_misspelled_override_is_an_error_listing_valid_fields():
    with pytest.raises(ConfigError) as exc:
        create_model("convnext_atto", layer_scale_init=0.0)
    assert "layer_scale_init_value" in str(exc.value)


def test_override_is_applied():
    m = create_model("convnext_atto", layer_scale_init_value=0.0, num_classes=7)
    assert all(b.gamma is None for s in m.stages for b in s.blocks)
    assert m.head.fc.out_features == 7


def test_wrong_channels_and_too_small_images_explain_what_was_expected():
    m = create_model("convnext_atto").eval()
    with pytest.raises(InputShapeError, match="expects 3 input channels, got 1"):
        m(torch.randn(1, 1, 64, 64))
    with pytest.raises(InputShapeError, match="at least 32×32; got 16×16"):
        m(torch.randn(1, 3, 16, 16))
    with pytest.raises(InputShapeError, match="4-D"):
        m(torch.randn(3, 64, 64))


def test_in_chans_and_any_surviving_size():
    m = create_model("convnext_atto", in_chans=1, num_classes=3).eval()
    for h, w in [(32, 32), (45, 77), (64, 33)]:
        assert m(torch.randn(2, 1, h, w)).shape == (2, 3)


def test_features_only_and_out_indices():
    m = create_model("convnext_atto", features_only=True, out_indices=(1, 3)).eval()
    feats = m(torch.randn(1, 3, 64, 64))
    assert [f.shape[1] for f in feats] == [info["num_chs"] for info in m.feature_info] == [80, 320]
    assert [f.shape[-1] for f in feats] == [64 // 8, 64 // 32]
    with pytest.raises(ConfigError):
        create_model("convnext_atto", features_only=True, out_indices=(7,))


def test_public_api():
    for name in ("create_model", "list_models", "reparameterize_model", "load_weights", "from_official_config"):
        assert callable(getattr(moderncnn, name))
