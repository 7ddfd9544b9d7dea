"""Training: the loop, checkpoints, recipes, progressive learning, optimizers, schedules, EMA, DDP.

``train(TrainConfig(...))`` is the Python API that ``moderncnn train`` wraps; ``load_recipe(name)`` reads a
packaged recipe (``moderncnn/recipes/NAME.yaml``). Heavy modules are imported on first use.
"""

from __future__ import annotations

from typing import Any

from .config import TrainConfig, list_recipes, load_recipe

__all__ = ["TrainConfig", "list_recipes", "load_recipe", "train", "evaluate_checkpoint", "TrainResult",
           "TrainingDivergedError"]


def __getattr__(name: str) -> Any:
    if name in ("train", "TrainResult", "TrainingDivergedError", "Trainer", "Callback"):
        from . import trainer

        return getattr(trainer, name)
    if name == "evaluate_checkpoint":
        from .evaluate import evaluate_checkpoint

        return evaluate_checkpoint
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
