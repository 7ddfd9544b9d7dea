"""Training-aware architecture search and compound scaling (EfficientNetV2 §3.3, §4.1); docs/search.md.

``SearchSpace``/``EFFICIENTNETV2`` (the space as a table), ``reward`` (A·S^w·P^v), ``ReinforceSampler`` (the
paper's controller as an Optuna sampler), ``run_search`` (the Optuna study behind ``moderncnn search``) and
``scale`` (compound scaling with the 480-pixel cap and extra layers in later stages). Needs ``optuna``.
"""

from .reward import RewardWeights, measure_step_time, reward
from .samplers import ReinforceSampler, make_sampler
from .scaling import ScaledConfig, compound, scale
from .space import EFFICIENTNETV2, EFFICIENTNETV2_SPACE, SearchSpace, StageChoices, load_space

__all__ = [
    "EFFICIENTNETV2",
    "EFFICIENTNETV2_SPACE",
    "ReinforceSampler",
    "RewardWeights",
    "ScaledConfig",
    "SearchSpace",
    "StageChoices",
    "compound",
    "load_space",
    "make_sampler",
    "measure_step_time",
    "reward",
    "run_search",
    "scale",
]


def __getattr__(name: str):
    if name == "run_search":  # the runner pulls in the trainer; import it when asked for
        from .runner import run_search

        return run_search
    raise AttributeError(name)
