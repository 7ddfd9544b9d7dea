"""Architecture search pieces without training: the space, the reward, the REINFORCE sampler, scaling."""

import dataclasses
import random
import statistics
import time

import optuna
import pytest
import torch
from torch import nn

from moderncnn import create_model
from moderncnn.analysis.complexity import count_params
from moderncnn.errors import ConfigError
from moderncnn.registry import get_entry
from moderncnn.search import (
    EFFICIENTNETV2,
    ReinforceSampler,
    RewardWeights,
    StageChoices,
    compound,
    load_space,
    measure_step_time,
    reward,
    scale,
)
from moderncnn.search.samplers import make_sampler, trials_to_optimum
from moderncnn.search.scaling import distribute_layers
from moderncnn.search.space import EFFICIENTNETV2_NANO

optuna.logging.set_verbosity(optuna.logging.WARNING)


# -- space -------------------------------------------------------------------------------------------------
def test_space_matches_paper_choices():
    """§3.3: per stage {MBConv, Fused-MBConv}, kernel {3, 5}, expansion {1, 4, 6}, layers, SE; B0's widths."""
    b0 = get_entry("efficientnetv2_b0").cfg.stages
    assert [(s.stride, s.channels) for s in EFFICIENTNETV2.stages] == [(s.stride, s.channels) for s in b0]
    for st in EFFICIENTNETV2.stages:
        assert st.block == ("fused", "mbconv") and st.kernel == (3, 5) and st.expand == (1, 4, 6)
        assert st.se == (False, True)
    assert len(EFFICIENTNETV2.options()) == 5 * len(b0)


@pytest.mark.parametrize("space", [EFFICIENTNETV2, EFFICIENTNETV2_NANO], ids=lambda s: s.name)
def test_points_build_as_the_table_says(space):
    rng = random.Random(0)
    for _ in range(1 if space is EFFICIENTNETV2 else 3):  # the full space's points reach ~25 M parameters
        point = space.sample(rng)
        model = space.build(point, num_classes=10, in_chans=1)
        for i, stage in enumerate(model.stages):
            block = stage[0]
            assert len(stage) == point[f"s{i}_layers"]
            kind = "fused" if hasattr(block, "fused") else "mbconv"
            assert kind == point[f"s{i}_block"]
            conv = block.fused.conv if kind == "fused" else block.dw.conv
            assert conv.kernel_size == (point[f"s{i}_kernel"],) * 2
            assert isinstance(block.se, nn.Identity) != point[f"s{i}_se"]
        out = model(torch.randn(2, 1, 32, 32))
        assert out.shape == (2, 10)


def test_stage_rows_from_yaml_lists_and_mappings():
    """The stage table arrives from YAML as lists (or mappings): create_model takes both, like a Stage."""
    point = EFFICIENTNETV2.sample(random.Random(1))
    rows = EFFICIENTNETV2.stage_table(point)
    a = create_model("efficientnetv2_custom", stages=rows, num_classes=10)
    keys = ("block", "expand", "kernel", "stride", "channels", "repeats", "se_ratio")
    b = create_model("efficientnetv2_custom", stages=[dict(zip(keys, r)) for r in rows], num_classes=10)
    assert a.cfg == b.cfg and count_params(a) == count_params(b)
    with pytest.raises(ConfigError, match="bad stage row"):
        create_model("efficientnetv2_custom", stages=[["fused", 1, 3]])


def test_point_outside_space_is_an_error():
    point = EFFICIENTNETV2.sample(random.Random(2))
    with pytest.raises(ConfigError, match="not in the space"):
        EFFICIENTNETV2.stage_table({**point, "s0_kernel": 7})
    with pytest.raises(ConfigError, match="lacks"):
        EFFICIENTNETV2.stage_table({"s0_kernel": 3})
    with pytest.raises(ConfigError, match="expand"):
        StageChoices(1, 16, expand=(0, 4))


def test_space_from_yaml(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("stages:\n"
                    "  - {stride: 1, channels: 8, block: [fused], kernel: [3], expand: [1], layers: [1], se: [false]}\n"
                    "  - {stride: 2, channels: 16, kernel: [3, 5], layers: [1, 2]}\n"
                    "se_ratio: 0.5\n")
    space = load_space(path)
    assert space.size() == 1 * (2 * 2 * 3 * 2 * 2)
    assert len(list(space.points())) == space.size()
    rows = space.stage_table(next(space.points()))
    assert rows[0] == ["fused", 1, 3, 1, 8, 1, 0.0]
    (tmp_path / "bad.yaml").write_text("stages:\n  - {stride: 1, chanels: 8}\n")
    with pytest.raises(ConfigError, match="stage 0"):
        load_space(tmp_path / "bad.yaml")
    with pytest.raises(ConfigError, match="unknown search space"):
        load_space("efficientnetv3")


# -- reward ------------------------------------------------------------------------------------------------
def test_reward_against_hand_computation():
    # A = 0.8, S = 0.25 s, P = 5 M:  0.25^-0.07 = 4^0.07 = e^(0.07·1.386294) = 1.1019051,
    # 5^-0.05 = e^(-0.05·1.609438) = 0.9226808;  0.8 × 1.1019051 × 0.9226808 = 0.8133654
    assert reward(0.8, 0.25, 5e6) == pytest.approx(0.8133654, abs=1e-7)
    # the exponents are configurable: w = v = 0 leaves the accuracy; w = -1 divides by S
    assert reward(0.8, 0.25, 5e6, RewardWeights(w=0.0, v=0.0)) == pytest.approx(0.8)
    assert reward(0.8, 0.25, 5e6, RewardWeights(w=-1.0, v=0.0)) == pytest.approx(3.2)
    # references only rescale: S_ref = 0.25 s, P_ref = 5 M gives A itself
    assert reward(0.8, 0.25, 5e6, RewardWeights(step_time_ref=0.25, params_ref=5e6)) == pytest.approx(0.8)
    with pytest.raises(ConfigError, match="fraction"):
        reward(80.0, 0.25, 5e6)
    with pytest.raises(ConfigError, match="positive"):
        reward(0.8, 0.0, 5e6)


class _SleepyNet(nn.Module):
    """A net whose training step takes a known time: `delay` per forward, 2 s extra on the first call."""

    def __init__(self, delay: float) -> None:
        super().__init__()
        self.fc = nn.Linear(3 * 8 * 8, 10)
        self.delay, self.calls = delay, 0

    def forward(self, x):
        self.calls += 1
        time.sleep(self.delay + (2.0 if self.calls == 1 else 0.0))
        return self.fc(x.flatten(1))


def test_step_time_is_measured_after_warmup_as_a_median():
    net = _SleepyNet(0.02)
    s = measure_step_time(net, batch=2, img_size=8, in_chans=3, warmup=1, iters=1, rounds=3)
    assert net.calls == 1 + 3  # warm-up steps, then rounds × iters timed steps, each a real forward
    assert net.fc.weight.grad is None  # the SGD step ran and zeroed its gradients (set_to_none)
    assert 0.02 <= s < 1.0  # the slow first call (2 s) is warm-up, not timed; the sleep is (with room for load)


# -- samplers ----------------------------------------------------------------------------------------------
_SYN_SPACE = [(f"p{i}", (0, 1, 2)) for i in range(6)]
_SYN_OPT = {f"p{i}": i % 3 for i in range(6)}


def _syn_reward(params):
    """Known optimum _SYN_OPT (reward 1); each matching choice adds 1/6."""
    return sum(params[k] == v for k, v in _SYN_OPT.items()) / len(_SYN_OPT)


def test_reinforce_finds_the_optimum_faster_than_random():
    seeds, cap = range(8), 400  # 3^6 = 729 points: random search needs ~729 trials on average
    rl = [trials_to_optimum(ReinforceSampler(seed=s), _syn_reward, _SYN_OPT, max_trials=cap, space=_SYN_SPACE)
          for s in seeds]
    rnd = [trials_to_optimum(make_sampler("random", seed=s), _syn_reward, _SYN_OPT, max_trials=cap,
                             space=_SYN_SPACE) for s in seeds]
    assert statistics.mean(rl) < 0.5 * statistics.mean(rnd), (rl, rnd)


def test_reinforce_policy_is_replayed_from_storage():
    """Two sampler objects (two workers) on one storage hold the same controller; it prefers the optimum."""
    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(storage=storage, direction="maximize", sampler=ReinforceSampler(seed=0))
    for _ in range(60):
        t = study.ask()
        study.tell(t, _syn_reward({n: t.suggest_categorical(n, list(o)) for n, o in _SYN_SPACE}))
    other = optuna.load_study(study_name=study.study_name, storage=storage, sampler=ReinforceSampler(seed=1))
    a, b = study.sampler.policy(study), other.sampler.policy(other)
    assert a.logits == b.logits and a.baseline == b.baseline and len(a.seen) == 60
    assert study.sampler.most_likely(study) == _SYN_OPT


def test_reinforce_minimizes_too():
    study = optuna.create_study(direction="minimize", sampler=ReinforceSampler(seed=3))
    study.optimize(lambda t: -_syn_reward({n: t.suggest_categorical(n, list(o)) for n, o in _SYN_SPACE}),
                   n_trials=120)
    assert study.sampler.most_likely(study) == _SYN_OPT


def test_unknown_sampler():
    with pytest.raises(ConfigError, match="reinforce, tpe, random"):
        make_sampler("evolution")


# -- scaling -----------------------------------------------------------------------------------------------
S_CFG = get_entry("efficientnetv2_s").cfg


def test_scaling_caps_inference_size_at_480():
    assert scale(S_CFG, 1.0, 1.0).eval_size == 384  # the base's size, untouched
    big = scale(S_CFG, 1.6, 2.0, resolution=1.5)
    assert big.eval_size == 480 and big.train_size == 376  # 384·1.5 = 576 capped; train keeps 300/384
    assert compound(S_CFG, 4).eval_size == 480
    assert scale(S_CFG, 1.0, 1.0, resolution=1.1, max_eval_size=400).eval_size == 400


def test_added_depth_lands_in_later_stages():
    base = [s.repeats for s in S_CFG.stages]  # 2, 4, 4, 6, 9, 15
    uniform = [-(-n * 3 // 2) for n in base]  # EfficientNet's ceil(1.5 n)
    ours = distribute_layers(base, 1.5)
    assert sum(ours) == sum(uniform)  # the same total as compound scaling
    added = [o - n for o, n in zip(ours, base)]
    added_uniform = [u - n for u, n in zip(uniform, base)]
    assert added[-1] > added_uniform[-1] and added[-2] >= added_uniform[-2]  # the last stages gain
    assert added[0] < added_uniform[0]  # the first stage gives up
    assert sum(added[3:]) > sum(added_uniform[3:])
    assert added == sorted(added)  # never fewer layers added to a later stage here
    scaled = scale(S_CFG, 1.0, 1.5)
    assert [s.repeats for s in scaled.config.stages] == ours
    # the plain rule back with later_bias 0 (proportional to n)
    assert sum(distribute_layers(base, 1.5, later_bias=0.0)) == sum(uniform)


def test_scaled_config_builds_as_custom_model():
    sc = scale(get_entry("efficientnetv2_b0").cfg, 1.2, 1.3)
    a = create_model("efficientnetv2_custom", num_classes=10, **sc.model_kwargs())
    b = get_entry("efficientnetv2_b0").model_cls(dataclasses.replace(sc.config, num_classes=10))
    assert count_params(a) == count_params(b)
    assert a.num_features == 1536  # 1280 · 1.2
    assert sum(len(s) for s in a.stages) == sum(s.repeats for s in sc.config.stages)


@pytest.mark.parametrize("name", ["reinforce", "tpe", "random"])
def test_every_sampler_draws_points_of_the_space(name):
    study = optuna.create_study(direction="maximize", sampler=make_sampler(name, seed=0))
    rows = []

    def objective(trial):
        rows.append(EFFICIENTNETV2_NANO.stage_table(EFFICIENTNETV2_NANO.suggest(trial)))  # raises off the space
        return float(sum(r[5] for r in rows[-1]))

    study.optimize(objective, n_trials=12)
    assert len(rows) == 12 and len({str(r) for r in rows}) > 1
