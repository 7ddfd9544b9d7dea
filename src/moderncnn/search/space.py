"""The search space of EfficientNetV2 (Tan & Le, 2021, §3.3) as a small table a user can edit.

§3.3: a stage-based factorized space (MnasNet's, Tan et al. 2019) whose choices per stage are the
convolution type {MBConv, Fused-MBConv}, the number of layers, the kernel size {3×3, 5×5} and the expansion
ratio {1, 4, 6}; channel sizes are reused from the backbone (they were searched before), pooling/skip
options are removed. Squeeze-excite on/off is a choice here too (the searched S uses SE only in its MBConv
stages, Table 4). One row of :data:`EFFICIENTNETV2_SPACE` is one stage: its fixed stride and width, then
the tuple of options for each choice. A point of the space is the stage table of
``create_model("efficientnetv2_custom", stages=...)`` (models/efficientnetv2.py).

A space can also be written as YAML (``moderncnn search --space my_space.yaml``)::

    stages:
      - {stride: 1, channels: 16, block: [fused, mbconv], kernel: [3, 5], expand: [1, 4, 6],
         layers: [1, 2], se: [false, true]}
      - ...
    se_ratio: 0.25
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ..errors import ConfigError

BLOCKS = ("fused", "mbconv")
CHOICES = ("block", "kernel", "expand", "layers", "se")  # the per-stage decisions, in parameter-name order


class TrialLike(Protocol):
    """What :meth:`SearchSpace.suggest` needs of an ``optuna.Trial``."""

    def suggest_categorical(self, name: str, choices: Any) -> Any: ...


@dataclass(frozen=True)
class StageChoices:
    """One stage of the space: fixed ``stride`` and ``channels`` (the backbone's), and the options of each choice."""

    stride: int
    channels: int
    block: tuple[str, ...] = BLOCKS
    kernel: tuple[int, ...] = (3, 5)
    expand: tuple[int, ...] = (1, 4, 6)
    layers: tuple[int, ...] = (1, 2, 3)
    se: tuple[bool, ...] = (False, True)

    def __post_init__(self) -> None:
        for name in CHOICES:
            options = getattr(self, name)
            if isinstance(options, list):
                object.__setattr__(self, name, options := tuple(options))
            if not isinstance(options, tuple) or not options:
                raise ConfigError(f"search stage {self}: {name} needs a non-empty list of options, got {options!r}")
            if len(set(options)) != len(options):
                raise ConfigError(f"search stage: {name} lists an option twice: {options!r}")
        if bad := [b for b in self.block if b not in BLOCKS]:
            raise ConfigError(f"search stage: block options must be among {BLOCKS}, got {bad}")
        if bad := [k for k in self.kernel if not (isinstance(k, int) and k >= 1 and k % 2 == 1)]:
            raise ConfigError(f"search stage: kernel sizes must be odd positive integers, got {bad}")
        for name in ("expand", "layers"):
            if bad := [v for v in getattr(self, name) if not (isinstance(v, int) and v >= 1)]:
                raise ConfigError(f"search stage: {name} options must be integers >= 1, got {bad}")
        if self.stride not in (1, 2) or self.channels < 1:
            raise ConfigError(f"search stage: stride must be 1 or 2 and channels >= 1, "
                              f"got {self.stride}, {self.channels}")


#    stride  channels   (EfficientNetV2-B0's widths and strides, models/efficientnetv2.py `_BASE`; each
#                        stage's layer options surround the base's count)
EFFICIENTNETV2_SPACE: tuple[StageChoices, ...] = (
    StageChoices(1, 16, layers=(1, 2)),
    StageChoices(2, 32, layers=(1, 2, 3)),
    StageChoices(2, 48, layers=(1, 2, 3)),
    StageChoices(2, 96, layers=(2, 3, 4)),
    StageChoices(1, 112, layers=(3, 5, 6)),
    StageChoices(2, 192, layers=(4, 6, 8)),
)


@dataclass(frozen=True)
class SearchSpace:
    """A table of :class:`StageChoices`; ``se_ratio`` is the squeeze ratio of a stage with SE on."""

    stages: tuple[StageChoices, ...]
    se_ratio: float = 0.25
    model: str = "efficientnetv2_custom"
    name: str = "custom"
    extra: dict[str, Any] = field(default_factory=dict)  # further create_model overrides (stem_chs, head_chs...)

    def __post_init__(self) -> None:
        if not self.stages:
            raise ConfigError("a search space needs at least one stage")

    # -- parameters ---------------------------------------------------------------------------------
    def param_names(self) -> list[str]:
        return [f"s{i}_{c}" for i in range(len(self.stages)) for c in CHOICES]

    def options(self) -> dict[str, tuple]:
        """Parameter name -> its options (the categorical distributions the samplers see)."""
        return {f"s{i}_{c}": getattr(st, c) for i, st in enumerate(self.stages) for c in CHOICES}

    def size(self) -> int:
        return math.prod(len(o) for o in self.options().values())

    def suggest(self, trial: TrialLike) -> dict[str, Any]:
        """Ask ``trial`` for one value of every choice (categorical); returns the parameter dict."""
        return {name: trial.suggest_categorical(name, list(opts)) for name, opts in self.options().items()}

    def sample(self, rng) -> dict[str, Any]:
        """A uniformly random point (``rng``: ``random.Random``)."""
        return {name: rng.choice(opts) for name, opts in self.options().items()}

    # -- point -> model ----------------------------------------------------------------------------
    def stage_table(self, params: dict[str, Any]) -> list[list[Any]]:
        """The point ``params`` as the rows ``[block, expand, kernel, stride, channels, repeats, se_ratio]``
        that ``create_model(self.model, stages=...)`` takes (plain lists: YAML- and JSON-able)."""
        missing = [n for n in self.param_names() if n not in params]
        if missing:
            raise ConfigError(f"the point lacks {', '.join(missing)} (space {self.name!r})")
        rows = []
        for i, st in enumerate(self.stages):
            p = {c: params[f"s{i}_{c}"] for c in CHOICES}
            for c in CHOICES:
                if p[c] not in getattr(st, c):
                    raise ConfigError(f"s{i}_{c}={p[c]!r} is not in the space (options {getattr(st, c)})")
            rows.append([p["block"], int(p["expand"]), int(p["kernel"]), st.stride, st.channels, int(p["layers"]),
                         self.se_ratio if p["se"] else 0.0])
        return rows

    def model_kwargs(self, params: dict[str, Any]) -> dict[str, Any]:
        """``create_model`` overrides (and ``moderncnn train --model-kwargs``) of the point ``params``."""
        return {"stages": self.stage_table(params), **self.extra}

    def build(self, params: dict[str, Any], **kwargs: Any):
        from ..factory import create_model

        return create_model(self.model, **self.model_kwargs(params), **kwargs)

    def points(self):
        """Every point (for tiny spaces in tests; the default space has ~10^15)."""
        names, opts = zip(*self.options().items())
        for combo in itertools.product(*opts):
            yield dict(zip(names, combo))


#    stride  channels   (half of B0's widths, fewer layers: a space that a 2-core CPU searches in an hour on
#                        28-32 px images; docs/experiments/search.md)
EFFICIENTNETV2_NANO_SPACE: tuple[StageChoices, ...] = (
    StageChoices(1, 8, layers=(1,)),
    StageChoices(2, 16, layers=(1, 2)),
    StageChoices(2, 24, layers=(1, 2)),
    StageChoices(2, 48, layers=(1, 2, 3)),
    StageChoices(1, 56, layers=(1, 2, 3)),
    StageChoices(2, 96, layers=(1, 2, 4)),
)

EFFICIENTNETV2 = SearchSpace(EFFICIENTNETV2_SPACE, name="efficientnetv2")
EFFICIENTNETV2_NANO = SearchSpace(EFFICIENTNETV2_NANO_SPACE, name="efficientnetv2-nano",
                                  extra={"stem_chs": 16, "head_chs": 512})
SPACES = {"efficientnetv2": EFFICIENTNETV2, "efficientnetv2-nano": EFFICIENTNETV2_NANO}


def load_space(name_or_path: str | Path) -> SearchSpace:
    """A packaged space by name (``efficientnetv2``) or a YAML file (see the module docstring)."""
    if str(name_or_path) in SPACES:
        return SPACES[str(name_or_path)]
    path = Path(name_or_path)
    if not path.is_file():
        raise ConfigError(f"unknown search space {str(name_or_path)!r}: give one of {', '.join(SPACES)} "
                          "or a YAML file with a `stages:` list")
    import yaml

    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"cannot read search space {path}: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("stages"), list):
        raise ConfigError(f"{path}: expected a mapping with a `stages:` list of stage rows")
    unknown = sorted(set(data) - {"stages", "se_ratio", "model", "extra"})
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {unknown}; valid: stages, se_ratio, model, extra")
    fields_ = {"stride", "channels", *CHOICES}
    stages = []
    for i, row in enumerate(data["stages"]):
        if not isinstance(row, dict) or not {"stride", "channels"} <= set(row) or set(row) - fields_:
            raise ConfigError(f"{path}: stage {i} must be a mapping with stride, channels and optionally "
                              f"{', '.join(CHOICES)}; got {row!r}")
        stages.append(StageChoices(**row))
    return SearchSpace(tuple(stages), se_ratio=float(data.get("se_ratio", 0.25)),
                       model=data.get("model", "efficientnetv2_custom"), name=path.stem,
                       extra=dict(data.get("extra") or {}))
