"""``deploy_model``: the deploy step shared by ``moderncnn fuse`` and the end of ``moderncnn train``.

It turns a trained model into its deploy form (:func:`moderncnn.deploy.fuse.fuse`, or only the Rep-block
merge of RepVGG §3.3 / RepLKNet §3), checks that the outputs did not change on a sample batch, times both
forms with the package's one timer (:func:`moderncnn.deploy.bench.time_rotating`) and writes the weights
with their model description (:mod:`moderncnn.interop.spec`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from ..interop.spec import ModelSpec, save_weights
from ..layers.reparam import reparameterize_model
from .bench import time_rotating
from .export import output_errors
from .fuse import FuseReport, fuse

DEPLOY_FORMS = ("fused", "reparameterized", "auto")


@dataclass
class DeployReport:
    """What :func:`deploy_model` did and measured."""

    path: Path  # the weights written (the JSON description is beside it)
    spec: ModelSpec
    max_abs_err: float  # deploy form vs the eval-mode model on the sample batch
    rel_err: float  # max_abs_err / max |output|
    bench_batch: int
    train_ms: float | None  # median ms per forward of the bench batch (None when not timed)
    deploy_ms: float | None
    fuse_report: FuseReport | None = None  # None for the reparameterized form

    @property
    def form(self) -> str:
        return self.spec.form

    @property
    def speedup(self) -> float | None:
        if self.train_ms is None or self.deploy_ms is None:
            return None
        return self.train_ms / max(1e-9, self.deploy_ms)

    def to_dict(self) -> dict[str, Any]:
        """The measurements, JSON-ready (stored as the description's ``extra``)."""
        return {"form": self.form, "max_abs_err": self.max_abs_err, "rel_err": self.rel_err,
                "bench_batch": self.bench_batch, "train_ms": self.train_ms, "deploy_ms": self.deploy_ms,
                "speedup": self.speedup}

    def __str__(self) -> str:
        line = f"{self.form}: max |Δ| {self.max_abs_err:.3g} (relative {self.rel_err:.3g}) on the sample batch"
        if self.speedup is not None:
            line += (f"; batch {self.bench_batch} forward: train form {self.train_ms:.2f} ms, deploy form "
                     f"{self.deploy_ms:.2f} ms ({self.speedup:.2f}×)")
        return line if self.fuse_report is None else f"{self.fuse_report}\n{line}"


def _preferred_form(model: nn.Module) -> str:
    """``reparameterized`` for families with a ``deploy`` config field (their weights then load into
    ``create_model(..., deploy=True)``), ``fused`` for the others."""
    cfg = getattr(model, "cfg", None)
    has_deploy = dataclasses.is_dataclass(cfg) and "deploy" in {f.name for f in dataclasses.fields(cfg)}
    return "reparameterized" if has_deploy else "fused"


def deploy_model(
    model: nn.Module,
    out_path: str | Path,
    sample_batch: torch.Tensor,
    *,
    form: str = "fused",
    spec_extra: Mapping[str, Any] | None = None,
    bench_batch: int | None = None,
    rounds: int = 5,
) -> DeployReport:
    """Write the deploy form of ``model`` (left unchanged) to ``out_path`` and report what it changed.

    ``form`` is ``fused`` (re-parameterize, fold BatchNorms and layer scales, drop dropout), ``reparameterized``
    (merge Rep blocks only) or ``auto`` (``reparameterized`` for RepVGG/RepLKNet, ``fused`` otherwise).
    ``sample_batch`` (on the model's device) is compared in eval mode; the timing repeats it to
    ``bench_batch`` images (default: its own size) for ``rounds`` rounds (0: no timing). ``spec_extra``
    (image size, mean/std, class names...) is stored with the description, next to the measurements.
    """
    if form not in DEPLOY_FORMS:
        raise ConfigError(f"deploy form {form!r}: choose one of {', '.join(DEPLOY_FORMS)}")
    if form == "auto":
        form = _preferred_form(model)
    was_training = model.training
    model.eval()
    try:
        frep = None
        if form == "fused":
            deployed, frep = fuse(model, report=True)
        else:
            deployed = reparameterize_model(model)
        x = sample_batch
        with torch.inference_mode():
            max_abs, rel = output_errors(deployed(x), model(x))
            n = bench_batch or len(x)
            xb = x.repeat(-(-n // len(x)), *([1] * (x.ndim - 1)))[:n]
            ms = (time_rotating({"train": lambda: model(xb), "deploy": lambda: deployed(xb)}, rounds,
                                device=xb.device) if rounds else {})
    finally:
        model.train(was_training)
    spec = ModelSpec.from_model(deployed, form)
    report = DeployReport(Path(out_path), spec, max_abs, rel, n, ms.get("train"), ms.get("deploy"), frep)
    report.path = save_weights(deployed, out_path, spec, extra={**(spec_extra or {}), **report.to_dict()})
    return report


__all__ = ["DEPLOY_FORMS", "DeployReport", "deploy_model"]
