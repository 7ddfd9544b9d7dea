"""RMSpropTF against the TF update rule written out by hand, weight-decay groups, LR schedules, EMA."""

import math

import pytest
import torch
from torch import nn

from moderncnn import create_model
from moderncnn.training.ema import ModelEma
from moderncnn.training.optim import OPTIMIZERS, RMSpropTF, create_optimizer, param_groups, scale_lr
from moderncnn.training.scheduler import LRSchedule

# ----------------------------------------------------------------------------------------------------------------
# RMSpropTF


def _tf_rmsprop_reference(p0, grads, lr, rho, eps, momentum, wd):
    """tf.compat.v1.train.RMSPropOptimizer(lr, decay=rho, momentum, epsilon) plus an L2 loss wd/2*||p||^2:
    ms starts at 1, mom at 0; ms = rho*ms + (1-rho)*g^2; mom = momentum*mom + lr*g/sqrt(ms+eps); p -= mom."""
    p = p0.clone().double()
    ms = torch.ones_like(p)
    mom = torch.zeros_like(p)
    for g in grads:
        g = g.double() + wd * p
        ms = rho * ms + (1 - rho) * g * g
        mom = momentum * mom + lr * g / torch.sqrt(ms + eps)
        p = p - mom
    return p


@pytest.mark.parametrize("wd", [0.0, 1e-2])
def test_rmsproptf_matches_tf_rule_three_steps(wd):
    g = torch.Generator().manual_seed(1)
    p0 = torch.randn(5, 3, generator=g, dtype=torch.float64)
    grads = [torch.randn(5, 3, generator=g, dtype=torch.float64) for _ in range(3)]
    param = nn.Parameter(p0.clone())
    opt = RMSpropTF([param], lr=0.1, alpha=0.9, eps=1e-3, momentum=0.9, weight_decay=wd)
    for grad in grads:
        param.grad = grad.clone()
        opt.step()
    expected = _tf_rmsprop_reference(p0, grads, lr=0.1, rho=0.9, eps=1e-3, momentum=0.9, wd=wd)
    torch.testing.assert_close(param.detach(), expected, rtol=1e-12, atol=1e-12)
    # torch's RMSprop (eps outside the sqrt, ms from 0) gives a clearly different result: the test can tell
    param2 = nn.Parameter(p0.clone())
    opt2 = torch.optim.RMSprop([param2], lr=0.1, alpha=0.9, eps=1e-3, momentum=0.9, weight_decay=wd)
    for grad in grads:
        param2.grad = grad.clone()
        opt2.step()
    assert (param2.detach() - expected).abs().max() > 1e-2


def test_rmsproptf_equals_timm_oracle():
    timm_optim = pytest.importorskip("timm.optim")
    torch.manual_seed(0)
    a, b = nn.Linear(4, 3).double(), nn.Linear(4, 3).double()
    b.load_state_dict(a.state_dict())
    ours = RMSpropTF(a.parameters(), lr=0.05, alpha=0.9, eps=1e-3, momentum=0.9, weight_decay=1e-3)
    ref = timm_optim.RMSpropTF(b.parameters(), lr=0.05, alpha=0.9, eps=1e-3, momentum=0.9, weight_decay=1e-3)
    for _ in range(4):
        x = torch.randn(8, 4, dtype=torch.float64)
        for model, opt in ((a, ours), (b, ref)):
            opt.zero_grad()
            model(x).square().sum().backward()
            opt.step()
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------------------------------------------
# Parameter groups and the factory


def test_no_weight_decay_on_norm_bias_gamma():
    model = create_model("convnext_atto")
    groups = param_groups(model, weight_decay=0.05)
    decay, no_decay = groups
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    # what must be decayed: exactly the conv and linear weights
    expected_decay = {
        f"{name}.weight" for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))
    }
    assert set(decay["names"]) == expected_decay
    no_decay_names = set(no_decay["names"])
    assert any(n.endswith("gamma") for n in no_decay_names)
    norm_params = {
        f"{name}.{p}" for name, m in model.named_modules() if isinstance(m, nn.LayerNorm) for p in ("weight", "bias")
    }
    assert norm_params and norm_params <= no_decay_names
    assert {n for n in no_decay_names if n.endswith("bias")} == {n for n, _ in model.named_parameters()
                                                                 if n.endswith("bias")}
    # every parameter exactly once
    assert len(decay["names"]) + len(no_decay_names) == len(list(model.parameters()))


def test_param_groups_match_timm_filter():
    timm_groups = pytest.importorskip("timm.optim._param_groups")
    model = create_model("convnext_atto")
    ours = param_groups(model, 0.05)
    ref = timm_groups.param_groups_weight_decay(model, 0.05)
    ref_decay = next(g for g in ref if g["weight_decay"] > 0)
    assert {id(p) for p in ours[0]["params"]} == {id(p) for p in ref_decay["params"]}


def test_batchnorm_params_never_decayed():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.GroupNorm(2, 4), nn.Conv2d(4, 2, 1))
    decay, no_decay = param_groups(model, 1e-4)
    assert decay["names"] == ["0.weight", "3.weight"]
    assert no_decay["names"] == ["1.weight", "1.bias", "2.weight", "2.bias", "3.bias"]


def test_create_optimizer_kinds():
    model = nn.Sequential(nn.Linear(3, 3), nn.LayerNorm(3))
    sgd = create_optimizer(model, "sgd", lr=0.1, weight_decay=1e-4)
    assert isinstance(sgd, torch.optim.SGD) and sgd.param_groups[0]["nesterov"]
    assert [g["weight_decay"] for g in sgd.param_groups] == [1e-4, 0.0]
    assert not create_optimizer(model, "momentum", lr=0.1).param_groups[0]["nesterov"]
    rms = create_optimizer(model, "rmsproptf", lr=0.1)
    assert isinstance(rms, RMSpropTF) and rms.defaults["eps"] == 1e-3 and rms.defaults["alpha"] == 0.9
    assert isinstance(create_optimizer(model, "adamw", lr=1e-3, weight_decay=0.05), torch.optim.AdamW)
    assert isinstance(create_optimizer(model, "adam", lr=1e-3), torch.optim.Adam)
    with pytest.raises(ValueError, match="rmsproptf"):
        create_optimizer(model, "lamb2", lr=0.1)
    assert set(OPTIMIZERS) == {"sgd", "momentum", "rmsproptf", "adamw", "adam",  # issue 12 added timm's:
                               "lamb", "lars", "adamp", "nadam", "radam", "rmsprop", "adagrad"}


def test_scale_lr():
    assert scale_lr(0.016, 4096, 256) == pytest.approx(0.256)  # EfficientNetV2: 0.016 per 256 -> 0.256 @ 4096


# ----------------------------------------------------------------------------------------------------------------
# Schedules


def test_exponential_staircase_with_warmup():
    # EfficientNetV2: warmup 5 epochs, x0.97 every 2.4 epochs counted from step 0
    s = LRSchedule(0.256, total_steps=35000, steps_per_epoch=100, sched="exponential_staircase",
                   warmup_epochs=5, warmup_lr=0.0, decay_epochs=2.4, decay_rate=0.97)
    assert s.lr_at(0) == 0.0
    assert s.lr_at(250) == pytest.approx(0.128)  # halfway through the linear warmup
    assert s.lr_at(499) == pytest.approx(0.256 * 499 / 500)
    # step 500: floor(500 / 240) = 2 decays already counted during warmup
    assert s.lr_at(500) == pytest.approx(0.256 * 0.97 ** 2)
    assert s.lr_at(719) == pytest.approx(0.256 * 0.97 ** 2)
    assert s.lr_at(720) == pytest.approx(0.256 * 0.97 ** 3)
    assert s.lr_at(34999) == pytest.approx(0.256 * 0.97 ** math.floor(34999 / 240))


def test_step_schedule_equals_timm_steplr():
    timm_sched = pytest.importorskip("timm.scheduler")
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    ref = timm_sched.StepLRScheduler(opt, decay_t=2.4, decay_rate=0.97)
    s = LRSchedule(0.1, total_steps=3000, steps_per_epoch=100, sched="step", decay_epochs=2.4, decay_rate=0.97)
    for epoch in range(30):
        assert s.lr_at(epoch * 100 + 37) == pytest.approx(ref._get_lr(epoch)[0])


def test_cosine_and_constant():
    s = LRSchedule(1.0, total_steps=1000, steps_per_epoch=10, sched="cosine", min_lr=0.01, warmup_epochs=1,
                   warmup_lr=0.1)
    assert s.lr_at(0) == pytest.approx(0.1)
    assert s.lr_at(5) == pytest.approx(0.55)
    assert s.lr_at(500) == pytest.approx(0.505)
    assert s.lr_at(1000) == pytest.approx(0.01)
    assert s.lr_at(2000) == pytest.approx(0.01)
    c = LRSchedule(0.3, total_steps=10, steps_per_epoch=1, sched="constant")
    assert [c.lr_at(i) for i in (0, 5, 9)] == [0.3, 0.3, 0.3]
    with pytest.raises(ValueError, match="cosine"):
        LRSchedule(0.1, 10, 1, sched="polynomial")


def test_schedule_sets_groups_with_lr_scale_and_is_a_function_of_the_step():
    model = nn.Linear(2, 2)
    opt = torch.optim.SGD([{"params": [model.weight], "lr_scale": 0.5}, {"params": [model.bias]}], lr=1.0)
    s = LRSchedule(0.2, total_steps=100, steps_per_epoch=10, sched="cosine")
    s.step(opt, 50)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05)
    assert opt.param_groups[1]["lr"] == pytest.approx(0.1)
    # no state to save: a schedule built again from the same arguments (as a resume does) gives the same rates
    s2 = LRSchedule(0.2, total_steps=100, steps_per_epoch=10, sched="cosine")
    assert [s2.lr_at(i) for i in range(0, 100, 7)] == [s.lr_at(i) for i in range(0, 100, 7)]


# ----------------------------------------------------------------------------------------------------------------
# EMA


def _small_net():
    return nn.Sequential(nn.Conv2d(2, 3, 1), nn.BatchNorm2d(3), nn.Flatten(), nn.Linear(12, 2))


@pytest.mark.parametrize("warmup", [True, False])
def test_ema_matches_formula(warmup):
    model = _small_net()
    ema = ModelEma(nn.DataParallel(model), decay=0.9, warmup=warmup)  # wrapper is unwrapped
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    for step in range(4):
        model.train()
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        model(torch.randn(4, 2, 2, 2))  # moves BN running stats and num_batches_tracked
        ema.update(nn.DataParallel(model), step=step)
        d = min(0.9, (1 + step) / (10 + step)) if warmup else 0.9
        for k, v in model.state_dict().items():
            expected[k] = d * expected[k] + (1 - d) * v if v.is_floating_point() else v.clone()
    for k, v in ema.module.state_dict().items():
        torch.testing.assert_close(v, expected[k], rtol=1e-6, atol=1e-6, msg=k)
    assert ema.module.state_dict()["1.num_batches_tracked"] == 4
    assert not ema.module.training and not any(p.requires_grad for p in ema.module.parameters())
    # warmup decay values: (1+s)/(10+s) = 0.1, 0.1818.., then capped at 0.9 eventually
    if warmup:
        assert ema.decay_at(0) == pytest.approx(0.1) and ema.decay_at(1) == pytest.approx(2 / 11)
        assert ema.decay_at(10**6) == 0.9
    bare = _small_net()
    bare.load_state_dict(ema.state_dict())  # loadable into a plain model
    ema2 = ModelEma(_small_net(), decay=0.9)
    ema2.load_state_dict(ema.state_dict())
    x = torch.randn(2, 2, 2, 2)
    torch.testing.assert_close(ema2(x), ema.module(x))
