"""layers/: drop path statistics, make_divisible, the drop-path schedule, squeeze-excite; and the shared
model mechanics (gradient checkpointing block by block, the family name read from the class)."""

import math

import pytest
import torch
from torch import nn

from moderncnn import create_model, list_models
from moderncnn.layers import DropPath, SqueezeExcite, drop_path, drop_path_rates, make_divisible
from moderncnn.models import base
from moderncnn.registry import get_entry


# -- drop path ------------------------------------------------------------------------------------
@pytest.mark.parametrize("p", [0.1, 0.3, 0.5])
def test_drop_path_keeps_a_fraction_and_rescales(p):
    n = 20_000
    x = torch.ones(n, 3, 2, 2)
    y = drop_path(x, p, training=True)
    per_sample = y.flatten(1)
    # a whole sample is dropped or kept: every element of a sample has one value
    assert torch.equal(per_sample.min(1).values, per_sample.max(1).values)
    kept = per_sample[:, 0] > 0
    # kept samples are rescaled by exactly 1 / (1 - p)
    assert torch.allclose(per_sample[kept], torch.full_like(per_sample[kept], 1 / (1 - p)))
    # kept fraction ~ Binomial(n, 1 - p): within 5 standard deviations
    sd = math.sqrt(p * (1 - p) / n)
    assert abs(kept.float().mean().item() - (1 - p)) < 5 * sd
    # so the expectation is unchanged
    assert abs(y.mean().item() - 1.0) < 5 * sd / (1 - p)


def test_drop_path_is_identity_in_eval_and_at_zero():
    x = torch.randn(8, 4, 3, 3)
    m = DropPath(0.5).eval()
    assert m(x) is x
    assert drop_path(x, 0.0, training=True) is x
    assert "drop_prob=0.500" in repr(m)


def test_drop_path_gradient_follows_the_mask():
    x = torch.ones(1000, 2, requires_grad=True)
    y = drop_path(x, 0.25, training=True)
    y.sum().backward()
    assert torch.equal(x.grad, y.detach())  # d(x·mask/keep)/dx = mask/keep = y for x = 1


# -- make_divisible (TF-slim rule) ----------------------------------------------------------------
@pytest.mark.parametrize(
    "v, divisor, kw, expected",
    [
        (32 * 0.5, 8, {}, 16),
        (32 * 0.35, 8, {}, 16),  # 11.2 -> 8 is < 90% of 11.2 -> 16
        (24 * 0.75, 8, {}, 24),  # 18 -> 16 is < 0.9·18 = 16.2 -> 24
        (96 * 1.4, 8, {}, 136),  # 134.4 -> 136
        (160 * 0.5, 8, {}, 80),
        (1280 * 1.4, 8, {}, 1792),
        (3, 8, {}, 8),  # never below the divisor
        (37, 16, {}, 48),  # int(37 + 8) // 16 * 16 = 32 < 0.9·37 = 33.3, so one divisor is added back
        (18, 8, {"round_limit": 0.0}, 16),  # EfficientNetV2's round_filters: no 90% correction
        (4, 8, {"min_value": 4}, 8),  # int(4 + 4) // 8 * 8 = 8
        (2, 8, {"min_value": 4}, 4),
    ],
)
def test_make_divisible_by_hand(v, divisor, kw, expected):
    assert make_divisible(v, divisor, **kw) == expected


# -- drop-path schedule -----------------------------------------------------------------------------
def test_drop_path_schedule_rises_linearly():
    rates = drop_path_rates(0.3, 7)
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(0.3)
    steps = [b - a for a, b in zip(rates, rates[1:])]
    assert steps == pytest.approx([0.05] * 6)
    assert drop_path_rates(0.3, 1) == [0.0] and drop_path_rates(0.3, 0) == []


def test_models_use_the_schedule():
    m = create_model("convnext_atto", drop_path_rate=0.2)
    rates = [b.drop_path.drop_prob if isinstance(b.drop_path, DropPath) else 0.0 for s in m.stages for b in s.blocks]
    assert rates == pytest.approx(drop_path_rates(0.2, sum(m.cfg.depths)))


# -- squeeze-excite ----------------------------------------------------------------------------------
def test_squeeze_excite_by_hand():
    se = SqueezeExcite(4, 2, nn.SiLU).double()
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64)
    s = x.mean((2, 3))  # (N, C)
    hidden = nn.functional.silu(s @ se.reduce.weight[:, :, 0, 0].T + se.reduce.bias)
    gate = torch.sigmoid(hidden @ se.expand.weight[:, :, 0, 0].T + se.expand.bias)
    assert torch.allclose(se(x), x * gate[:, :, None, None])
    assert sum(p.numel() for p in se.parameters()) == (4 * 2 + 2) + (2 * 4 + 4)
    assert isinstance(SqueezeExcite(4, 2).act, nn.ReLU)  # RepVGG's default activation


def test_one_squeeze_excite_serves_both_families():
    with torch.device("meta"):
        effnet = create_model("efficientnetv2_b0")
        repvgg = create_model("repvgg_d2se", num_blocks=(1, 1, 1, 1))
    for m, act in ((effnet, nn.SiLU), (repvgg, nn.ReLU)):
        ses = [x for x in m.modules() if isinstance(x, SqueezeExcite)]
        assert ses and all(isinstance(x.act, act) for x in ses)
    assert not any("SqueezeExcite" in type(x).__name__ and not isinstance(x, SqueezeExcite)
                   for m in (effnet, repvgg) for x in m.modules())


# -- one gradient-checkpointing mechanism: block by block, every family ---------------------------
SMALL = {
    "convnext_atto": {},
    "convnext_roadmap_12_convnext": dict(depths=(1, 1, 2, 1)),
    "repvgg_a0": dict(num_blocks=(1, 1, 2, 1)),
    "mobilenext_035": {},
    "mobilenetv2_050": {},
    "efficientnetv2_b0": dict(depth_mult=0.25),
    "replknet_31b": dict(channels=(8, 8, 16, 16), layers=(1, 1, 2, 1)),
}


def _blocks(model):
    return sum(len(s) if isinstance(s, nn.Sequential) else len(s.blocks) for s in model.stages)


@pytest.mark.parametrize("name", list(SMALL))
def test_grad_checkpointing_is_per_block_and_exact(name, monkeypatch):
    # no dropout or drop path: the two runs must give the same numbers
    model = create_model(name, num_classes=5, drop_rate=0.0, drop_path_rate=0.0, **SMALL[name]).train()
    x = torch.randn(2, 3, 64, 64)
    ref = model(x)
    ref.sum().backward()
    ref_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    calls = []
    real = base.checkpoint

    def counting(fn, *args, **kw):
        calls.append(fn)
        return real(fn, *args, **kw)

    monkeypatch.setattr(base, "checkpoint", counting)
    model.set_grad_checkpointing(True)
    out = model(x)
    out.sum().backward()
    assert len(calls) == _blocks(model), "one checkpoint per block"
    assert torch.allclose(out, ref, atol=1e-5)
    assert all(torch.allclose(p.grad, g, atol=1e-5) for p, g in zip(model.parameters(), ref_grads))


# -- the family name is written once, on the class ------------------------------------------------
def test_family_comes_from_the_model_class():
    for name in list_models():
        entry = get_entry(name)
        assert entry.family == entry.model_cls.family != ""
