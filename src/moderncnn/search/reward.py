"""The training-aware reward of EfficientNetV2 (Tan & Le, 2021, §3.3) and the step time it needs.

reward = A · S^w · P^v, with A the accuracy after a short proxy training, S the (normalized) training
step time and P the parameter count; the paper uses w = -0.07 and v = -0.05, "empirically determined to
balance the trade-offs similar to MnasNet". S and P are divided by reference values (default 1 s and
1 M parameters) so the reward is unit-free; a constant reference scales every reward alike, so it never
changes which architecture wins.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ConfigError


@dataclass(frozen=True)
class RewardWeights:
    w: float = -0.07  # exponent of the step time S
    v: float = -0.05  # exponent of the parameter count P
    step_time_ref: float = 1.0  # seconds: S is divided by this
    params_ref: float = 1e6  # P is divided by this


def reward(accuracy: float, step_time: float, params: float, weights: RewardWeights = RewardWeights()) -> float:
    """A · (S / S_ref)^w · (P / P_ref)^v; ``accuracy`` in [0, 1], ``step_time`` in seconds."""
    if not 0.0 <= accuracy <= 1.0:
        raise ConfigError(f"accuracy must be a fraction in [0, 1], got {accuracy}")
    if step_time <= 0 or params <= 0:
        raise ConfigError(f"step time and parameter count must be positive, got S={step_time}, P={params}")
    return accuracy * (step_time / weights.step_time_ref) ** weights.w * (params / weights.params_ref) ** weights.v


def measure_step_time(
    model: nn.Module,
    *,
    batch: int,
    img_size: int,
    in_chans: int,
    device: str | torch.device = "cpu",
    channels_last: bool = False,
    warmup: int = 2,
    iters: int = 2,
    rounds: int = 5,
) -> float:
    """Median seconds of one real training step (forward, cross-entropy, backward, SGD update) of ``model``
    on ``device``, after ``warmup`` untimed steps: the benchmark timer of ``deploy/bench.py``
    (``rounds`` rounds of ``iters`` steps, CUDA events on a GPU). The model is trained in place on random data,
    so pass a throw-away copy."""
    from ..deploy.bench import check_device, make_runner, time_interleaved

    dev = check_device(str(device))
    if getattr(model, "num_classes", 10) < 10:  # make_runner's random targets are in [0, 10)
        model.reset_classifier(10)
    runner = make_runner(model, name="search", impl="moderncnn", form="train", mode="train", dev=dev, batch=batch,
                         img_size=img_size, precision="fp32", channels_last=channels_last, compile=False,
                         in_chans=in_chans, complexity=False)
    return time_interleaved([runner], dev, warmup=warmup, iters=iters, rounds=rounds)[0]
