"""Export a fused model to ONNX, a ``torch.export`` program or safetensors, and check it numerically.

Every export starts from the deploy form (:func:`moderncnn.deploy.fuse.fuse`): an unfused model is
fused first, with a note saying so. The file is then reloaded (onnxruntime, ``torch.export.load``,
or ``create_model`` + ``load_weights``) and run on fresh random input at two batch sizes, and the
relative error ``max|a − b| / max|b|`` against the fused PyTorch model is reported.

Conventions (docs/ecosystem.md, "Export"): ONNX goes through the dynamo exporter (``torch.onnx.export(...,
dynamo=True, dynamic_shapes=...)``) with a dynamic batch dimension, traced at batch ≥ 2 because
``torch.export`` specializes size-1 dimensions; weights are published as ``.safetensors`` described by a
:class:`~moderncnn.interop.spec.ModelSpec` (in the metadata and as JSON beside them), never as pickles.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_leaves

from ..errors import CheckpointError, ConfigError, InputShapeError, UnknownModelError
from ..interop import load_weights
from ..interop.spec import WEIGHT_SUFFIXES, ModelSpec, find_description, missing_description, read_extra, save_weights
from .fuse import fuse, is_fused

FORMATS = ("onnx", "torch-export", "safetensors")
SUFFIX = {"onnx": ".onnx", "torch-export": ".pt2", "safetensors": ".safetensors"}


@dataclass
class ExportResult:
    path: Path
    format: str
    input_shape: tuple[int | str, ...]  # "batch" marks the dynamic dimension
    errors: dict[int, float] = field(default_factory=dict)  # batch -> rel err vs the fused PyTorch model
    fuse_error: float | None = None  # fused vs the original eval model (None when it came fused)
    notes: list[str] = field(default_factory=list)


# -- which model -------------------------------------------------------------------------------------
def _find_weights(folder: Path) -> Path:
    # a training run folder holds best/last (train form) and model_deploy (fused, with its own JSON)
    names = ("best.safetensors", "last.safetensors", "model.safetensors", "last.pth", "last.pt", "checkpoint.pth",
             "checkpoint.pt", "model.pth")
    for name in names:
        if (folder / name).is_file():
            return folder / name
    found = sorted(
        (p for p in folder.iterdir() if p.suffix in (".safetensors", ".pth", ".pt", ".bin")),
        key=lambda p: p.stat().st_mtime,
    )
    if not found:
        raise CheckpointError(f"no weights (.safetensors, .pth, .pt) in {folder}")
    return found[-1]


def load_checkpoint_model(
    path: str | Path,
    model_name: str | None = None,
    *,
    num_classes: int | None = None,
    use_ema: bool = False,
) -> nn.Module:
    """Build the model a checkpoint (file or training folder) belongs to and load its weights.

    The model comes from the checkpoint's description (:func:`moderncnn.interop.spec.read_spec`: the
    weight file's metadata, the JSON beside it or the folder's ``config.json``), rebuilt in the form the
    weights are in; ``model_name`` replaces the described name, or names the model when nothing describes
    it (then with the variant's defaults), and ``num_classes`` replaces the described head.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    weights = _find_weights(path) if path.is_dir() else path
    looked: list[str] = []
    found = find_description(path, looked) or (find_description(weights, looked) if weights != path else None)
    if found is not None:
        spec = found[0] if model_name is None else dataclasses.replace(found[0], name=model_name)
    elif model_name is not None:
        from ..registry import get_entry

        cfg = get_entry(model_name).cfg
        spec = ModelSpec(model_name, {}, num_classes=cfg.num_classes, in_chans=cfg.in_chans)
    else:
        raise missing_description(path, looked)
    if num_classes is not None:
        spec = dataclasses.replace(spec, num_classes=num_classes)
    if use_ema and weights.suffix == ".safetensors":
        # a training run keeps its EMA weights beside the raw ones: TAG_ema.safetensors next to TAG.safetensors
        ema = weights.with_name(weights.name.removesuffix(".safetensors").removesuffix("_ema") + "_ema.safetensors")
        if not ema.is_file():
            raise CheckpointError(
                f"--ema: there are no EMA weights beside {weights} (no {ema.name}; the run was trained without "
                f"--model-ema); leave out --ema to use {weights.name}"
            )
        weights, use_ema = ema, False
    model = spec.build()
    load_weights(model, weights, layout="native" if spec.form == "fused" else "auto", use_ema=use_ema)
    return model


def resolve_model(source: nn.Module | str | Path, model_name: str | None = None, **kwargs: Any) -> nn.Module:
    """A model from a module, a registered name (random weights) or a checkpoint path."""
    if isinstance(source, nn.Module):
        return source
    from ..registry import list_models

    if isinstance(source, str) and not Path(source).exists():
        if source in list_models():
            from ..factory import create_model

            return create_model(source, **{k: v for k, v in kwargs.items() if k == "num_classes" and v is not None})
        if Path(source).suffix not in WEIGHT_SUFFIXES and "/" not in source:  # reads as a model name
            from ..registry import get_entry

            try:
                get_entry(source)
            except UnknownModelError as exc:
                raise UnknownModelError(f"{source!r} is neither a file nor a registered model: {exc}") from None
    return load_checkpoint_model(source, model_name, **kwargs)


def input_size(model: nn.Module, img_size: int | None) -> int:
    if img_size:
        return int(img_size)
    size = getattr(model, "pretrained_cfg", {}).get("input_size")
    return int(size[-1]) if size else 224


# -- loading what was exported -----------------------------------------------------------------------
class OnnxModule:
    """An ONNX file run by onnxruntime (CPU), called like a module: tensors in, tensors out."""

    def __init__(self, path: str | Path) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise ImportError("running ONNX files needs onnxruntime: pip install 'moderncnn[export]'") from exc
        self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.input_shape = tuple(d if isinstance(d, int) else "batch" for d in inp.shape)

    def __call__(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        outs = self.session.run(None, {self.input_name: x.detach().cpu().numpy()})
        outs = [torch.from_numpy(o) for o in outs]
        return outs[0] if len(outs) == 1 else outs


def _program_input_shape(program: torch.export.ExportedProgram) -> tuple[int | str, ...]:
    for spec in program.graph_signature.input_specs:
        if spec.kind == torch.export.graph_signature.InputKind.USER_INPUT:
            node = next(n for n in program.graph.nodes if n.name == spec.arg.name)
            return tuple(d if isinstance(d, int) else "batch" for d in node.meta["val"].shape)
    raise ValueError("the exported program has no tensor input")


def load_exported(path: str | Path) -> Any:
    """Load what :func:`export_model` wrote: ``.safetensors`` (+ JSON) -> fused ``nn.Module``;
    ``.pt2`` -> the program's module; ``.onnx`` -> an :class:`OnnxModule`. Each has ``input_shape``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist")
    if path.suffix == ".onnx":
        return OnnxModule(path)
    if path.suffix == ".pt2":
        program = torch.export.load(str(path))
        module = program.module()
        module.input_shape = _program_input_shape(program)
        return module
    if path.suffix == ".safetensors":
        model = load_checkpoint_model(path)
        size = read_extra(path).get("input_size") or [model.in_chans, 224, 224]
        model.input_shape = ("batch", *size)
        return model
    raise CheckpointError(f"unknown export format {path.suffix!r}: expected .onnx, .pt2 or .safetensors")


def check_input_shape(x: torch.Tensor, expected: tuple[int | str, ...], what: str = "the exported model") -> None:
    """Raise an :class:`InputShapeError` naming ``expected`` if ``x`` does not fit it."""
    ok = x.ndim == len(expected) and all(isinstance(e, str) or e == s for e, s in zip(expected, x.shape))
    if not ok:
        shape = "(" + ", ".join(str(e) for e in expected) + ")"
        raise InputShapeError(
            f"{what} expects input of shape {shape} ('batch' may be any size), got {tuple(x.shape)}; "
            "re-export with --img-size / in_chans matching your data, or resize the input"
        )


def _flat(out: Any) -> list[torch.Tensor]:
    return [t.float() for t in tree_leaves(out) if isinstance(t, torch.Tensor)]


def output_errors(a: Any, b: Any) -> tuple[float, float]:
    """Largest ``max|a − b|`` and largest ``max|a − b| / max|b|`` over the output tensors (lists for
    features-only models) of ``a`` against the reference ``b``."""
    pairs = list(zip(_flat(a), _flat(b), strict=True))
    diffs = [((x - y).abs().max(), y.abs().max().clamp_min(1e-12)) for x, y in pairs]
    return max(d.item() for d, _ in diffs), max((d / m).item() for d, m in diffs)


def _rel_err(a: Any, b: Any) -> float:
    return output_errors(a, b)[1]


@torch.no_grad()
def validate(
    exported: Any,
    reference: nn.Module,
    inputs: list[torch.Tensor],
) -> dict[int, float]:
    """Relative error of ``exported`` vs ``reference`` on each input (keyed by batch size)."""
    expected = getattr(exported, "input_shape", None)
    errors = {}
    for x in inputs:
        if expected is not None:
            check_input_shape(x, expected)
        errors[x.shape[0]] = _rel_err(exported(x), reference(x))
    return errors


# -- export ------------------------------------------------------------------------------------------
def write_format(model: nn.Module, fmt: str, out: Path, example: torch.Tensor, notes: list[str]) -> list[Path]:
    """Write the (already fused) ``model`` as ``fmt`` to ``out``, traced on ``example`` with a dynamic batch
    dimension; the files written (ONNX may add external data). Notes for the user go to ``notes``."""
    batch = torch.export.Dim("batch", min=1)
    if fmt == "onnx":
        nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
        # one self-contained file unless the weights exceed what protobuf can hold (2 GB)
        torch.onnx.export(
            model, (example,), str(out), dynamo=True, dynamic_shapes=({0: batch},),
            input_names=["input"], external_data=nbytes > 1_500_000_000, verbose=False,
        )
        data = Path(str(out) + ".data")
        return [out, data] if data.exists() else [out]
    if fmt == "torch-export":
        program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
        torch.export.save(program, str(out))
        return [out]
    if fmt == "safetensors":
        extra = {"input_size": list(example.shape[1:]), "torch": torch.__version__}
        weights = save_weights(model, out, ModelSpec.from_model(model), extra=extra)
        notes.append(f"restore with moderncnn.deploy.load_exported({str(out)!r})")
        return [weights, weights.with_suffix(".json")]
    raise ConfigError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")


def export_model(
    source: nn.Module | str | Path,
    fmt: str,
    out: str | Path,
    *,
    img_size: int | None = None,
    batch: int = 2,
    model_name: str | None = None,
    num_classes: int | None = None,
    check: bool = True,
    example_input: torch.Tensor | None = None,
    log: Callable[[str], None] | None = print,
) -> ExportResult:
    """Fuse ``source`` if needed, write it as ``fmt`` to ``out``, reload it and compare with PyTorch.

    ``source`` is a model, a registered name or a checkpoint. The trace uses a batch of
    ``max(batch, 2)`` images of ``img_size`` (default: the model's input size); the check runs the
    reloaded file on fresh input at that batch and at batch 1. ``example_input`` replaces the
    random trace batch; one that does not fit the model raises an :class:`InputShapeError`.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    say = log or (lambda _msg: None)
    out = Path(out)
    if out.suffix != SUFFIX[fmt]:
        out = out.with_suffix(SUFFIX[fmt]) if out.suffix in SUFFIX.values() else Path(str(out) + SUFFIX[fmt])
    out.parent.mkdir(parents=True, exist_ok=True)
    model = resolve_model(source, model_name, num_classes=num_classes)
    notes: list[str] = []
    size = input_size(model, img_size)
    in_chans = getattr(model, "in_chans", 3)
    expected = ("batch", in_chans, size, size)
    if example_input is not None:
        if hasattr(model, "check_input"):
            model.check_input(example_input)
        check_input_shape(example_input, ("batch", in_chans, "H", "W"), what=getattr(model, "model_name", "model"))
        example = example_input
        expected = ("batch", *example.shape[1:])
    else:
        p = next(model.parameters())
        example = torch.randn(max(2, batch), in_chans, size, size, dtype=p.dtype, device=p.device)
        if hasattr(model, "check_input"):
            model.check_input(example)
    if example.shape[0] < 2:
        example = example.expand(2, *example.shape[1:]).clone()
        notes.append("traced at batch 2 (torch.export would fix a batch of 1 as a constant)")
    fuse_error = None
    if is_fused(model):
        fused = model
    else:
        reason = "it is in training mode" if model.training else "it has not been through moderncnn.fuse"
        notes.append(f"fused the model first ({reason}): re-parameterized, BatchNorm folded, dropout removed")
        was_training = model.training
        fused = fuse(model)
        with torch.no_grad():
            fuse_error = _rel_err(fused(example), model.eval()(example))
        model.train(was_training)
    for note in notes:
        say(f"note: {note}")
    files = write_format(fused, fmt, out, example, notes)
    result = ExportResult(out, fmt, expected, fuse_error=fuse_error, notes=notes)
    say(f"wrote {', '.join(str(f) for f in files)}")
    if fuse_error is not None:
        say(f"  fused vs original model: rel err {fuse_error:.2e}")
    if check:
        exported = load_exported(out)
        g = torch.Generator().manual_seed(1234)
        batches = sorted({example.shape[0], 1}, reverse=True)
        inputs = [torch.randn(b, *example.shape[1:], generator=g).to(example) for b in batches]
        result.errors = validate(exported, fused, inputs)
        for b, err in result.errors.items():
            say(f"  {fmt} vs PyTorch at batch {b}: rel err {err:.2e}")
    return result


__all__ = [
    "ExportResult",
    "FORMATS",
    "OnnxModule",
    "check_input_shape",
    "export_model",
    "input_size",
    "load_checkpoint_model",
    "load_exported",
    "output_errors",
    "resolve_model",
    "validate",
    "write_format",
]
