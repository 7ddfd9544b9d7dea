"""Compound scaling of an EfficientNetV2 base with the paper's two changes (EfficientNetV2 §4.1, end).

EfficientNet (Tan & Le, 2019, §3.3) scales depth by α^φ, width by β^φ and resolution by γ^φ (α = 1.2,
β = 1.1, γ = 1.15), rounding each stage's layers up (``ceil(d · n)``). EfficientNetV2 scales S to M and L
"using similar compound scaling ... with a few additional optimizations: (1) we restrict the maximum
inference image size to 480, as very large images often lead to expensive memory and training speed
overhead; (2) as a heuristic, we also gradually add more layers to later stages (e.g., stage 5 and 6 in
Table 4) in order to increase the network capacity without adding much runtime overhead."

:func:`scale` keeps the total layer count of the EfficientNet rule, ``Σ ceil(d · n_i)``, but hands the
added layers to the stages in proportion to ``n_i · i^later_bias`` (stage position ``i`` from 1), so later
stages get more of them; ``later_bias = 0`` gives (about) the plain proportional rule. How close it comes to
the published M and L is in docs/search.md.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError
from ..models.efficientnetv2 import EfficientNetV2Config

MAX_EVAL_SIZE = 480  # §4.1 (1)
ALPHA, BETA, GAMMA = 1.2, 1.1, 1.15  # EfficientNet §3.3 (depth, width, resolution per unit φ)


@dataclass(frozen=True)
class ScaledConfig:
    """A scaled EfficientNetV2 config (repeats materialized, ``depth_mult`` 1) and its image sizes."""

    config: EfficientNetV2Config
    train_size: int
    eval_size: int

    def model_kwargs(self) -> dict[str, Any]:
        """``create_model("efficientnetv2_custom", **kwargs)`` builds this network."""
        c = self.config
        return {"stages": [list(s) for s in c.stages], "stem_chs": c.stem_chs, "head_chs": c.head_chs,
                "width_mult": c.width_mult, "depth_mult": c.depth_mult}


def distribute_layers(repeats: list[int], depth: float, later_bias: float = 1.0) -> list[int]:
    """New layer counts: ``Σ ceil(depth · n_i)`` layers in all (EfficientNet's total), the added ones given to
    stage ``i`` (1-based) in proportion to ``n_i · i^later_bias`` (largest remainders; EfficientNetV2 §4.1 (2))."""
    if depth < 1.0:
        return [max(1, math.ceil(depth * n)) for n in repeats]  # shrinking: the plain rule
    extra = sum(math.ceil(depth * n) for n in repeats) - sum(repeats)
    weights = [n * (i + 1) ** later_bias for i, n in enumerate(repeats)]
    total = sum(weights)
    shares = [extra * w / total for w in weights]
    add = [math.floor(s) for s in shares]
    # largest remainders first; ties go to the later stage
    order = sorted(range(len(shares)), key=lambda i: (shares[i] - add[i], i), reverse=True)
    for i in order[: extra - sum(add)]:
        add[i] += 1
    return [n + a for n, a in zip(repeats, add)]


def _round8(x: float) -> int:
    return max(8, int(round(x / 8)) * 8)


def scale(
    config: EfficientNetV2Config,
    width: float,
    depth: float,
    *,
    resolution: float = 1.0,
    base_train_size: int = 300,
    base_eval_size: int = 384,
    max_eval_size: int = MAX_EVAL_SIZE,
    later_bias: float = 1.0,
) -> ScaledConfig:
    """Scale ``config`` by ``width`` (channels, via ``width_mult``), ``depth`` (layers, more to later stages)
    and ``resolution`` (image sizes, multiples of 8, evaluation capped at ``max_eval_size``; the training size
    keeps the base's train/eval ratio). Defaults: the sizes of EfficientNetV2-S (§4.1, Table 3)."""
    if width <= 0 or depth <= 0 or resolution <= 0:
        raise ConfigError(f"scale factors must be positive, got width={width}, depth={depth}, resolution={resolution}")
    if not 0 < base_train_size <= base_eval_size or max_eval_size < 8:
        raise ConfigError(f"need 0 < base_train_size <= base_eval_size and max_eval_size >= 8, got "
                          f"{base_train_size}, {base_eval_size}, {max_eval_size}")
    repeats = [config.round_repeats(s.repeats) for s in config.stages]
    new = distribute_layers(repeats, depth, later_bias)
    stages = tuple(s._replace(repeats=n) for s, n in zip(config.stages, new))
    cfg = dataclasses.replace(config, stages=stages, width_mult=config.width_mult * width, depth_mult=1.0)
    eval_size = min(_round8(base_eval_size * resolution), max_eval_size - max_eval_size % 8)
    train_size = _round8(eval_size * base_train_size / base_eval_size)
    return ScaledConfig(cfg, train_size, eval_size)


def compound(config: EfficientNetV2Config, phi: float, **kwargs: Any) -> ScaledConfig:
    """:func:`scale` by EfficientNet's compound coefficient: width β^φ, depth α^φ, resolution γ^φ."""
    return scale(config, BETA**phi, ALPHA**phi, resolution=GAMMA**phi, **kwargs)
