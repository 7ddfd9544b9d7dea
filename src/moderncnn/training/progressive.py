"""Progressive learning with adaptive regularization (EfficientNetV2, Tan & Le, ICML 2021, §4 and Algorithm 1).

Training is split into M stages. Early stages use small images and weak regularization; later stages use large
images and strong regularization (RandAugment magnitude, mixup/cutmix alpha, dropout), because a small network
input needs less regularization than a large one.

Two behaviours are provided, because the paper and the released code disagree (docs/training.md,
"Progressive learning"):

``mode="paper"`` (Algorithm 1)
    Stage ``i = 0..M-1`` uses ``v_i = v_min + (v_max - v_min) * i / (M - 1)`` for the image size and for every
    regularizer, so the first stage uses exactly the minimum and the last exactly the maximum. Image sizes are
    rounded to the nearest multiple of ``size_divisor`` (default 1, i.e. to the nearest integer; halves round
    to even, Python's ``round``). Dropout ramps too.

``mode="official"`` (``google/automl/efficientnetv2/main.py``)
    ``ratio = (k + 1) / M``; ``size = int(size_min + (size_max - size_min) * ratio)`` (truncation; the first stage
    is therefore *not* ``size_min``); RandAugment ``= linspace(ra_min, ra_max, M)[k]``; mixup and cutmix
    ``= linspace(mix_min, mix_max, M)[k]``; dropout is **constant** at its maximum (the released code computes a
    dropout list and then deletes it). With ``size_divisor > 1`` the truncated size is rounded down to a multiple.

``mode="random"`` (a control, not a method of the paper)
    The ranges of ``paper``, but stage ``i`` draws its image size uniformly at random from ``[size_min, size_max]``
    (``random.Random(seed)``, so a run and its resume agree) instead of growing it, and every regularizer sits at
    the same relative place in its range as the drawn size: a larger image trains with stronger regularization,
    as adaptive regularization asks, but sizes do not grow. It separates "growing sizes" from "varying sizes"
    (the ``progressive`` experiment, docs/experiments/README.md).

Stages split the epochs as the official code splits steps: stage ``k`` ends at ``int(total_epochs * (k+1) / M)``,
so every stage gets ``N / M`` epochs when ``M`` divides ``N`` and the last stage always ends at ``N``.
"""

from __future__ import annotations

import dataclasses
import random
import re
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from ..errors import ConfigError
from ..plotting import pyplot

__all__ = ["MODES", "PROGRESSIVE_TARGETS", "ProgressiveSchedule", "StageParams", "from_model", "has_targets",
           "schedule_for", "set_dropout"]

MODES = ("paper", "official", "random")

Range = tuple[float, float]


@dataclass
class StageParams:
    """What one progressive stage trains with. Epochs are ``[start_epoch, end_epoch)``; ``batch_size`` is None
    unless the schedule was given per-stage batch sizes."""

    stage: int
    start_epoch: int
    end_epoch: int
    img_size: int
    ra_magnitude: float
    mixup_alpha: float
    cutmix_alpha: float
    dropout: float
    batch_size: int | None = None

    @property
    def epochs(self) -> int:
        return self.end_epoch - self.start_epoch

    def describe(self, batch_size: int) -> str:
        return (f"{self.img_size} px, RandAugment m {self.ra_magnitude:.3g}, mixup {self.mixup_alpha:.3g}, cutmix "
                f"{self.cutmix_alpha:.3g}, dropout {self.dropout:.3g}, batch {batch_size}")


def _pair(value: float | Range, name: str) -> Range:
    if isinstance(value, (int, float)):
        return float(value), float(value)
    lo, hi = value
    if lo > hi:
        raise ValueError(f"progressive {name} range must be (min, max) with min <= max, got {value}")
    return float(lo), float(hi)


def _linspace(lo: float, hi: float, n: int, i: int) -> float:
    """``numpy.linspace(lo, hi, n)[i]`` without numpy (exact at both ends)."""
    if n == 1:
        return hi
    if i == n - 1:
        return hi
    return lo + (hi - lo) * i / (n - 1)


class ProgressiveSchedule:
    """Per-stage image size, regularization strength and batch size over ``total_epochs``.

    Args:
        total_epochs: length of training in epochs.
        num_stages: M (the paper and the code use 4).
        size: (min, max) training image size. Official code: min 128 (``ibase``), max = the model's train size.
        ra_magnitude: (min, max) RandAugment magnitude (0 disables RandAugment).
        mixup, cutmix: (min, max) alpha of mixup and cutmix.
        dropout: (min, max) classifier dropout; constant at max in ``official`` mode.
        batch_sizes: optional per-stage batch sizes (smaller images allow larger batches); length ``num_stages``.
        mode: ``"paper"``, ``"official"`` or ``"random"`` (see the module docstring).
        size_divisor: image sizes are made multiples of this (1 keeps the reference values).
        seed: the draw of ``"random"`` mode (unused by the others).

    A single number instead of a pair means "constant".
    """

    def __init__(
        self,
        total_epochs: int,
        *,
        num_stages: int = 4,
        size: float | Range = (128, 300),
        ra_magnitude: float | Range = (5.0, 15.0),
        mixup: float | Range = (0.0, 0.0),
        cutmix: float | Range = (0.0, 0.0),
        dropout: float | Range = (0.1, 0.3),
        batch_sizes: list[int] | None = None,
        mode: str = "paper",
        size_divisor: int = 1,
        seed: int = 0,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"Unknown progressive mode {mode!r}; expected one of {', '.join(MODES)}.")
        if num_stages < 1:
            raise ValueError(f"num_stages must be >= 1, got {num_stages}")
        if total_epochs < num_stages:
            raise ValueError(
                f"Progressive learning needs at least one epoch per stage: total_epochs={total_epochs} < "
                f"num_stages={num_stages}. Train longer or pass fewer stages."
            )
        if batch_sizes is not None and len(batch_sizes) != num_stages:
            raise ValueError(f"batch_sizes needs one entry per stage ({num_stages}), got {len(batch_sizes)}")
        if size_divisor < 1:
            raise ValueError(f"size_divisor must be >= 1, got {size_divisor}")
        self.total_epochs = int(total_epochs)
        self.num_stages = int(num_stages)
        self.size = _pair(size, "size")
        self.ra_magnitude = _pair(ra_magnitude, "ra_magnitude")
        self.mixup = _pair(mixup, "mixup")
        self.cutmix = _pair(cutmix, "cutmix")
        self.dropout = _pair(dropout, "dropout")
        self.batch_sizes = list(batch_sizes) if batch_sizes is not None else None
        self.mode = mode
        self.size_divisor = int(size_divisor)
        self.seed = int(seed)
        rng = random.Random(self.seed)
        self._draws = [rng.random() for _ in range(self.num_stages)]  # "random" mode's place of each stage
        self._stages = [self._build_stage(k) for k in range(self.num_stages)]

    # ----------------------------------------------------------------------------------------------------------
    def _build_stage(self, k: int) -> StageParams:
        m, d = self.num_stages, self.size_divisor

        def place(r: Range) -> float:  # where stage k sits in a (min, max) range
            if self.mode == "random":
                return r[0] + (r[1] - r[0]) * self._draws[k]
            return _linspace(*r, m, k)

        img_size = int(round(place(self.size) / d)) * d
        dropout = place(self.dropout)
        if self.mode == "official":  # truncated sizes from (k + 1) / M, dropout constant at its maximum
            img_size = int(self.size[0] + (self.size[1] - self.size[0]) * (k + 1) / m) // d * d
            dropout = self.dropout[1]
        return StageParams(
            stage=k,
            start_epoch=self.total_epochs * k // m,
            end_epoch=self.total_epochs * (k + 1) // m,
            img_size=img_size,
            ra_magnitude=place(self.ra_magnitude),
            mixup_alpha=place(self.mixup),
            cutmix_alpha=place(self.cutmix),
            dropout=dropout,
            batch_size=self.batch_sizes[k] if self.batch_sizes is not None else None,
        )

    @property
    def stages(self) -> list[StageParams]:
        """All stages, in order (copies: editing them does not change the schedule)."""
        return [dataclasses.replace(s) for s in self._stages]

    def stage_at(self, epoch: int) -> StageParams:
        """The stage that trains epoch ``epoch`` (0-based). Epochs past the end stay in the last stage."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        for s in self._stages:
            if epoch < s.end_epoch:
                return dataclasses.replace(s)
        return dataclasses.replace(self._stages[-1])

    def is_stage_start(self, epoch: int) -> bool:
        """True when ``epoch`` is the first epoch of a stage (where the trainer rebuilds loaders)."""
        return any(s.start_epoch == epoch for s in self._stages)

    # ----------------------------------------------------------------------------------------------------------
    def table(self) -> str:
        """A printable table of the stages."""
        header = ("stage", "epochs", "size", "RandAug m", "mixup", "cutmix", "dropout", "batch")
        rows = [
            (
                str(s.stage),
                f"{s.start_epoch}-{s.end_epoch - 1}",
                str(s.img_size),
                f"{s.ra_magnitude:.2f}",
                f"{s.mixup_alpha:.3f}",
                f"{s.cutmix_alpha:.3f}",
                f"{s.dropout:.3f}",
                "-" if s.batch_size is None else str(s.batch_size),
            )
            for s in self._stages
        ]
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
        lines = [f"progressive learning ({self.mode} mode, {self.total_epochs} epochs, {self.num_stages} stages)"]
        lines.append("  ".join(h.rjust(w) for h, w in zip(header, widths)))
        lines.append("  ".join("-" * w for w in widths))
        lines.extend("  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in rows)
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()

    def plot(self, path: str) -> str | None:
        """Write a PNG of image size and each regularizer against the epoch; None without matplotlib."""
        plt = pyplot(Path(path).name)
        if plt is None:
            return None

        epochs = list(range(self.total_epochs + 1))
        per_epoch = [self.stage_at(min(e, self.total_epochs - 1)) for e in epochs]
        series = [
            ("image size (px)", [s.img_size for s in per_epoch]),
            ("RandAugment magnitude", [s.ra_magnitude for s in per_epoch]),
            ("mixup / cutmix alpha", None),
            ("dropout", [s.dropout for s in per_epoch]),
        ]
        fig, axes = plt.subplots(len(series), 1, figsize=(6, 8), sharex=True)
        for ax, (label, values) in zip(axes, series):
            if values is None:
                ax.step(epochs, [s.mixup_alpha for s in per_epoch], where="post", label="mixup")
                ax.step(epochs, [s.cutmix_alpha for s in per_epoch], where="post", label="cutmix", linestyle="--")
                ax.legend(loc="upper left")
            else:
                ax.step(epochs, values, where="post")
            ax.set_ylabel(label)
            ax.grid(alpha=0.3)
            for s in self._stages[1:]:
                ax.axvline(s.start_epoch, color="gray", linewidth=0.5)
        axes[-1].set_xlabel("epoch")
        fig.suptitle(f"EfficientNetV2 progressive learning ({self.mode} mode)")
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return path

    # ----------------------------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return dict(
            total_epochs=self.total_epochs,
            num_stages=self.num_stages,
            size=list(self.size),
            ra_magnitude=list(self.ra_magnitude),
            mixup=list(self.mixup),
            cutmix=list(self.cutmix),
            dropout=list(self.dropout),
            batch_sizes=self.batch_sizes,
            mode=self.mode,
            size_divisor=self.size_divisor,
            seed=self.seed,
        )

    @classmethod
    def from_dict(cls, d: dict) -> ProgressiveSchedule:
        d = dict(d)
        total = d.pop("total_epochs")
        for key in ("size", "ra_magnitude", "mixup", "cutmix", "dropout"):
            if key in d and isinstance(d[key], list):
                d[key] = tuple(d[key])
        return cls(total, **d)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ProgressiveSchedule) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.to_dict().items())
        return f"ProgressiveSchedule({args})"


# ---------------------------------------------------------------------------------------------------------------
# Per-model targets: (size, RandAugment m, mixup(=cutmix) alpha, dropout) as (min, max) pairs.
#
# "official": google/automl/efficientnetv2/effnetv2_configs.py (train size, ram, mix, dropout) with ibase 128,
#   RandAugment starting at 5 and mixup at 0 (main.py). B0-B3 train with V1 AutoAugment in the released code,
#   which has no magnitude schedule: RandAugment is off (0) here.
# "paper": Table 6 for S/M/L. The paper has no row for XL or B0-B3; for those we keep the paper's minima
#   (128 px, m 5, mixup 0, dropout 0.1) and the official maxima, so the ramps follow Algorithm 1.
PROGRESSIVE_TARGETS: dict[str, dict[str, dict[str, Range]]] = {
    "official": {
        "s": dict(size=(128, 300), ra_magnitude=(5, 10), mix=(0, 0), dropout=(0.2, 0.2)),
        "m": dict(size=(128, 384), ra_magnitude=(5, 15), mix=(0, 0.2), dropout=(0.3, 0.3)),
        "l": dict(size=(128, 384), ra_magnitude=(5, 20), mix=(0, 0.5), dropout=(0.4, 0.4)),
        "xl": dict(size=(128, 384), ra_magnitude=(5, 20), mix=(0, 0.5), dropout=(0.4, 0.4)),
        "b0": dict(size=(128, 192), ra_magnitude=(0, 0), mix=(0, 0), dropout=(0.2, 0.2)),
        "b1": dict(size=(128, 192), ra_magnitude=(0, 0), mix=(0, 0), dropout=(0.2, 0.2)),
        "b2": dict(size=(128, 208), ra_magnitude=(0, 0), mix=(0, 0), dropout=(0.3, 0.3)),
        "b3": dict(size=(128, 240), ra_magnitude=(0, 0), mix=(0, 0), dropout=(0.3, 0.3)),
    },
    "paper": {
        "s": dict(size=(128, 300), ra_magnitude=(5, 15), mix=(0, 0), dropout=(0.1, 0.3)),
        "m": dict(size=(128, 380), ra_magnitude=(5, 20), mix=(0, 0.2), dropout=(0.1, 0.4)),
        "l": dict(size=(128, 380), ra_magnitude=(5, 25), mix=(0, 0.4), dropout=(0.1, 0.5)),
        "xl": dict(size=(128, 384), ra_magnitude=(5, 20), mix=(0, 0.5), dropout=(0.1, 0.4)),
        "b0": dict(size=(128, 192), ra_magnitude=(0, 0), mix=(0, 0), dropout=(0.1, 0.2)),
        "b1": dict(size=(128, 192), ra_magnitude=(0, 0), mix=(0, 0), dropout=(0.1, 0.2)),
        "b2": dict(size=(128, 208), ra_magnitude=(0, 0), mix=(0, 0), dropout=(0.1, 0.3)),
        "b3": dict(size=(128, 240), ra_magnitude=(0, 0), mix=(0, 0), dropout=(0.1, 0.3)),
    },
}


def _match_variant(name: str) -> str | None:
    """``"tf_efficientnetv2_s.in21k"`` / ``"efficientnetv2-m"`` / ``"L"`` -> ``"s"`` / ``"m"`` / ``"l"``; else None."""
    base = name.lower().split(".")[0]
    match = re.fullmatch(r"(?:tf_)?(?:efficientnet_?v2[_-])?(s|m|l|xl|b[0-3])", base)
    return match.group(1) if match else None


def has_targets(name: str) -> bool:
    """Whether model ``name`` has an EfficientNetV2 progressive table (:data:`PROGRESSIVE_TARGETS`)."""
    return _match_variant(name) is not None


def _variant(name: str) -> str:
    variant = _match_variant(name)
    if variant is None:
        valid = ", ".join(f"efficientnetv2_{v}" for v in PROGRESSIVE_TARGETS["official"])
        raise ValueError(
            f"No progressive-learning targets for model {name!r}; they exist for {valid} (also with the tf_ "
            "prefix). For another model build ProgressiveSchedule(total_epochs, size=..., ra_magnitude=..., ...)."
        )
    return variant


def from_model(name: str, total_epochs: int, mode: str = "official", **overrides) -> ProgressiveSchedule:
    """The EfficientNetV2 progressive schedule of model ``name`` (S/M/L/XL, B0-B3) over ``total_epochs``.

    ``mode="official"`` gives the released code's per-stage values (docs/training.md, "Progressive learning";
    e.g. S: sizes 171, 214, 257, 300, RandAugment 5, 6.67, 8.33, 10, dropout 0.2 throughout); ``mode="paper"``
    gives paper Table 6's ramps (S: 128 -> 300, RandAugment 5 -> 15, dropout 0.1 -> 0.3). ``overrides`` are passed to
    :class:`ProgressiveSchedule` (e.g. ``num_stages``, ``batch_sizes``, ``size_divisor``).
    """
    if mode not in MODES:
        raise ValueError(f"Unknown progressive mode {mode!r}; expected one of {', '.join(MODES)}.")
    t = PROGRESSIVE_TARGETS["paper" if mode == "random" else mode][_variant(name)]
    kwargs = dict(size=t["size"], ra_magnitude=t["ra_magnitude"], mixup=t["mix"], cutmix=t["mix"],
                  dropout=t["dropout"], mode=mode)
    kwargs.update(overrides)
    return ProgressiveSchedule(total_epochs, **kwargs)



def schedule_for(model: str, total_epochs: int, mode: str, *, num_stages: int, default_dropout: float | None,
                 seed: int = 0, **ranges) -> ProgressiveSchedule:
    """The training run's schedule: model ``model``'s EfficientNetV2 table with ``ranges`` (``size``,
    ``ra_magnitude``, ``mixup``, ``cutmix``, ``dropout``, ``batch_sizes``) overriding it; a model without a
    table needs ``size`` and gets RandAugment off and ``default_dropout`` throughout unless given. Every invalid
    value is a :class:`ConfigError`."""
    if mode not in MODES:
        raise ConfigError(f"--progressive {mode!r}: expected one of {', '.join(MODES)}")
    try:
        if has_targets(model):
            return from_model(model, total_epochs, mode, num_stages=num_stages, seed=seed, **ranges)
        if "size" not in ranges:
            raise ConfigError(
                f"{model} has no EfficientNetV2 progressive table; give the ranges yourself "
                "(prog_size: [min, max], and optionally prog_ra_magnitude, prog_mixup, prog_dropout)"
            )
        ranges = {"ra_magnitude": 0.0, "dropout": default_dropout or 0.0, **ranges}
        return ProgressiveSchedule(total_epochs, num_stages=num_stages, mode=mode, seed=seed, **ranges)
    except ConfigError:
        raise
    except ValueError as exc:  # the schedule's own range checks
        raise ConfigError(str(exc)) from exc


def set_dropout(model: nn.Module, p: float) -> None:
    """Set a stage's classifier dropout (``model.drop_rate`` and every ``nn.Dropout`` in the head)."""
    if hasattr(model, "drop_rate"):
        model.drop_rate = p
    for attr in getattr(model, "head_attrs", ("head",)):
        head = getattr(model, attr, None)
        if isinstance(head, nn.Module):
            for m in head.modules():
                if isinstance(m, nn.Dropout):
                    m.p = p
