"""The description of a saved model: one typed :class:`ModelSpec`, one writer, one reader.

Every file we write that holds weights (converted weights, training checkpoints, fused models,
exported safetensors) is described by a ``ModelSpec``: the registered name, the config fields that
differ from the registered variant, ``num_classes``, ``in_chans``, the form the weights are in
(``train``, ``reparameterized`` — Rep blocks merged, RepVGG §3.3 / RepLKNet §3 —, or ``fused`` — also
BatchNorms and layer scales folded by :func:`moderncnn.deploy.fuse.fuse`) and the features-only
settings. ``spec.build()`` rebuilds the module those weights load into.

:func:`write_spec` stores it as JSON beside the weights (``X.safetensors`` -> ``X.json``, or
``config.json`` in a folder) and :func:`spec_metadata` as the safetensors metadata of the weight file
itself, so a lone file still describes itself. :func:`read_spec` reads either, and also every file
moderncnn 0.1.0 wrote before this module existed, through one converter per old writer
(``_LEGACY``). The layout of the JSON is described in ``docs/ecosystem.md``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import CheckpointError, ConfigError
from .io import atomic_write_bytes

FORMS = ("train", "reparameterized", "fused")
FORMAT = "moderncnn-spec"  # the "format" of our JSON and the safetensors metadata key of the spec
VERSION = 1
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")


def _jsonable(value: Any, where: str = "overrides") -> Any:
    """Tuples to lists, recursively; anything JSON cannot hold is an error naming it."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, where) for v in value]
    if isinstance(value, (int, float, str, bool)) or value is None:
        return value
    raise ConfigError(f"{where}: {type(value).__name__} value {value!r} cannot be saved in a model description")


def _tuples(value: Any) -> Any:
    """JSON lists back to the tuples our frozen configs use (``depths``, stage tables)."""
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    return value


def _config_fields(name: str) -> set[str]:
    from ..registry import get_entry

    return {f.name for f in dataclasses.fields(get_entry(name).cfg)}


@dataclass(frozen=True)
class ModelSpec:
    """What rebuilds a saved model: ``build()`` returns the module its weights load into."""

    name: str
    overrides: dict  # config fields that differ from the registered variant (JSON types)
    num_classes: int
    in_chans: int
    form: str = "train"  # "train", "reparameterized" or "fused"
    features_only: bool = False
    out_indices: tuple | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError(f"model description: name must be a registered model name, got {self.name!r}")
        if self.form not in FORMS:
            raise ConfigError(f"model description: form {self.form!r} is not one of {', '.join(FORMS)}")
        taken = sorted({"num_classes", "in_chans", "deploy"} & set(self.overrides))
        if taken:
            raise ConfigError(
                f"model description: {', '.join(taken)} belong in their own fields (num_classes, in_chans, "
                "form), not in overrides"
            )
        object.__setattr__(self, "overrides", _jsonable(dict(self.overrides)))
        object.__setattr__(self, "num_classes", int(self.num_classes))
        object.__setattr__(self, "in_chans", int(self.in_chans))
        out = None if self.out_indices is None else tuple(int(i) for i in self.out_indices)
        object.__setattr__(self, "out_indices", out)

    # -- from a live model ---------------------------------------------------------------------------
    @classmethod
    def from_model(cls, model: nn.Module, form: str | None = None) -> ModelSpec:
        """The spec of a model built by :func:`moderncnn.create_model` (``form`` detected when None)."""
        from ..registry import get_entry

        name, cfg = getattr(model, "model_name", None), getattr(model, "cfg", None)
        if cfg is None or not isinstance(name, str) or not dataclasses.is_dataclass(cfg):
            raise ConfigError(
                f"{type(model).__name__} was not built by moderncnn.create_model, so there is no model "
                "description to save; export it as onnx or torch-export instead"
            )
        base = get_entry(name).cfg  # an unknown name raises UnknownModelError here
        overrides = {
            f.name: getattr(cfg, f.name)
            for f in dataclasses.fields(cfg)
            if f.name not in ("num_classes", "in_chans", "deploy")
            and getattr(cfg, f.name) != getattr(base, f.name, object())
        }
        features = bool(getattr(model, "features_only", False))
        return cls(
            name=name,
            overrides=overrides,
            num_classes=cfg.num_classes,
            in_chans=cfg.in_chans,
            form=form if form is not None else detect_form(model),
            features_only=features,
            out_indices=tuple(model.out_indices) if features else None,
        )

    # -- to a live model -----------------------------------------------------------------------------
    def build(self) -> nn.Module:
        """The model these weights load into: train form in train mode, deploy forms in eval mode."""
        from ..registry import build_model

        options = {k: _tuples(v) for k, v in self.overrides.items()}
        has_deploy = "deploy" in _config_fields(self.name)
        if self.form != "train" and has_deploy:
            options["deploy"] = True  # the Rep blocks are built merged, as reparameterize() leaves them
        model = build_model(self.name, num_classes=self.num_classes, in_chans=self.in_chans, **options)
        if self.features_only:
            model.as_features(self.out_indices)
        elif self.out_indices is not None:
            raise ConfigError("model description: out_indices only applies with features_only=True")
        if self.form == "train":
            return model
        if self.form == "fused":
            from ..deploy.fuse import fuse

            return fuse(model, inplace=True)
        from ..layers.reparam import reparameterize_model

        return reparameterize_model(model.eval(), inplace=True)

    @classmethod
    def from_weights(cls, name: str, source: str | Path | Mapping) -> ModelSpec:
        """The spec of a weight file nothing describes (a timm or official checkpoint) for model ``name``:
        the class count is read off the checkpoint's classifier and ``in_chans`` off its first conv
        (the modules ``pretrained_cfg`` names), in whatever layout :func:`moderncnn.load_weights` reads."""
        from ..registry import build_model
        from . import _names, convert_state_dict, read_state_dict

        probe = build_model(name)
        sd, _ = convert_state_dict(read_state_dict(source), probe)
        cfg = probe.pretrained_cfg
        fc, conv = f"{_names(cfg['classifier'])[0]}.weight", f"{_names(cfg['first_conv'])[0]}.weight"
        if conv not in sd:
            raise CheckpointError(f"{source} has no {conv} (the first conv of {name}): is it a {name} checkpoint?")
        return cls(name, {}, num_classes=sd[fc].shape[0] if fc in sd else 0, in_chans=sd[conv].shape[1])

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["out_indices"] = list(self.out_indices) if self.out_indices is not None else None
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "model description") -> ModelSpec:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown or "name" not in d:
            raise CheckpointError(
                f"{where}: " + (f"unknown fields {unknown}" if unknown else "no 'name'")
                + f"; a model description has {sorted(known)}"
            )
        if "num_classes" not in d or "in_chans" not in d:
            d = {**_variant_defaults(d["name"]), **d}
        try:
            return cls(**{"overrides": {}, **d})
        except ConfigError as exc:
            raise CheckpointError(f"{where}: {exc}") from None


def detect_form(model: nn.Module) -> str:
    """``fused`` after :func:`moderncnn.fuse`; ``reparameterized`` when Rep blocks are merged; else ``train``."""
    if getattr(model, "is_fused", False):
        return "fused"
    cfg = getattr(model, "cfg", None)
    if getattr(cfg, "deploy", False):
        return "reparameterized"
    reps = [m for m in model.modules() if hasattr(m, "reparameterize")]
    if reps and all(getattr(m, "reparam_conv", None) is not None for m in reps):
        return "reparameterized"
    return "train"


def _variant_defaults(name: str) -> dict[str, int]:
    from ..registry import get_entry

    cfg = get_entry(name).cfg
    return {"num_classes": cfg.num_classes, "in_chans": cfg.in_chans}


# -- the writer ------------------------------------------------------------------------------------------
def spec_path(path: str | Path) -> Path:
    """Where the description of ``path`` goes: ``X.json`` beside ``X.safetensors``, or ``DIR/config.json``."""
    path = Path(path)
    if path.is_dir() or not path.suffix:
        return path / "config.json"
    return path.with_suffix(".json")


def _document(spec: ModelSpec, extra: Mapping[str, Any] | None) -> dict[str, Any]:
    doc: dict[str, Any] = {"format": FORMAT, "version": VERSION, "spec": spec.to_dict()}
    if extra:
        doc["extra"] = _jsonable(dict(extra), "extra")
    return doc


def write_spec(spec: ModelSpec, path: str | Path, extra: Mapping[str, Any] | None = None) -> Path:
    """Write ``spec`` (and ``extra``: image size, mean/std, class names, errors, timings...) as JSON.

    ``path`` is a weight file (the JSON goes beside it, same stem) or a folder (``config.json``). The
    write is atomic. Returns the JSON's path.
    """
    target = spec_path(path)
    atomic_write_bytes(target, (json.dumps(_document(spec, extra), indent=2) + "\n").encode())
    return target


def spec_metadata(spec: ModelSpec, extra: Mapping[str, Any] | None = None) -> dict[str, str]:
    """Safetensors metadata that makes a weight file describe itself (merge it into any other metadata)."""
    return {"format": "pt", FORMAT: json.dumps(_document(spec, extra), sort_keys=True)}


def save_weights(
    model: nn.Module,
    path: str | Path,
    spec: ModelSpec | None = None,
    *,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Save ``model``'s weights as safetensors (atomically) and its description beside and inside it.

    ``spec`` defaults to :meth:`ModelSpec.from_model`; ``extra`` (image size, mean/std, errors...) is
    stored with it. Returns the path of the weights (``.safetensors`` is appended when missing).
    """
    from safetensors.torch import save

    path = Path(path)
    if path.suffix != ".safetensors":
        path = Path(str(path) + ".safetensors")
    spec = spec if spec is not None else ModelSpec.from_model(model)
    sd = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_write_bytes(path, save(sd, metadata=spec_metadata(spec, extra)))
    write_spec(spec, path, extra)
    return path


# -- the reader ------------------------------------------------------------------------------------------
def read_spec(path: str | Path) -> ModelSpec:
    """The :class:`ModelSpec` of a weight file, a JSON description or a run folder.

    Looks, in order, at the spec in the file's own safetensors metadata, the JSON beside it
    (``X.json``), older moderncnn metadata in the file, and the folder's ``config.json``; a
    :class:`CheckpointError` says where it looked when none of them describes the model.
    """
    return read_description(path)[0]


def read_extra(path: str | Path) -> dict[str, Any]:
    """What was stored beside the spec (``extra`` of :func:`write_spec`; {} if nothing)."""
    return read_description(path)[1]


def read_description(path: str | Path) -> tuple[ModelSpec, dict[str, Any]]:
    """``(spec, extra)`` of ``path`` (see :func:`read_spec`)."""
    looked: list[str] = []
    found = find_description(path, looked)
    if found is None:
        raise missing_description(path, looked)
    return found


def missing_description(path: str | Path, looked: list[str]) -> CheckpointError:
    """The error for a model nothing describes, naming the places searched."""
    return CheckpointError(
        f"cannot tell which model {path} holds: nothing describes it (looked in {', '.join(looked)}); "
        "pass the model name (--model NAME)"
    )


def find_description(path: str | Path, looked: list[str] | None = None) -> tuple[ModelSpec, dict] | None:
    """``(spec, extra)`` of ``path``, or None when nothing describes it (a corrupt description still raises)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path} does not exist")
    for where, doc in _documents(path, [] if looked is None else looked):
        found = _parse(doc, where)
        if found is not None:
            return found
    return None


def _documents(path: Path, looked: list[str]):
    """Candidate descriptions of ``path`` as ``(where, dict)``, best first."""
    if path.is_dir():
        yield from _json_file(path / "config.json", looked)
        return
    if path.suffix == ".json":
        yield from _json_file(path, looked)
        return
    meta = _safetensors_metadata(path, looked) if path.suffix == ".safetensors" else {}
    if FORMAT in meta:
        yield f"{path} (metadata)", _loads(meta[FORMAT], f"{path} metadata")
    yield from _json_file(path.with_suffix(".json"), looked)
    if meta:
        yield f"{path} (metadata)", meta
    yield from _json_file(path.parent / "config.json", looked)


def _loads(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{where} is not valid JSON: {exc}") from exc


def _json_file(path: Path, looked: list[str]):
    looked.append(str(path))
    if path.is_file():
        yield str(path), _loads(path.read_text(), str(path))


def _safetensors_metadata(path: Path, looked: list[str]) -> dict[str, str]:
    from safetensors import safe_open

    looked.append(f"{path} (metadata)")
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as exc:  # not a safetensors file, truncated...
        raise CheckpointError(f"cannot read weights {path}: {type(exc).__name__}: {exc}") from exc


def _parse(doc: Any, where: str) -> tuple[ModelSpec, dict[str, Any]] | None:
    if not isinstance(doc, Mapping):
        raise CheckpointError(f"{where}: expected a JSON object, got {type(doc).__name__}")
    if doc.get("format") == FORMAT:
        if doc.get("version", VERSION) > VERSION:
            raise CheckpointError(f"{where} was written by a newer moderncnn (description version "
                                  f"{doc['version']}, this one reads {VERSION}); upgrade moderncnn")
        return ModelSpec.from_dict(doc.get("spec", {}), where), dict(doc.get("extra") or {})
    for matches, convert in _LEGACY:
        if matches(doc):
            return convert(doc)
    return None


# -- files written by moderncnn 0.1.0 (one converter per old writer) ------------------------------------
def _split_overrides(name: str, overrides: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, int], bool]:
    """Old overrides -> (config overrides, num_classes/in_chans, deploy)."""
    rest = dict(overrides)
    heads = {**_variant_defaults(name), **{k: rest.pop(k) for k in ("num_classes", "in_chans") if k in rest}}
    return rest, heads, bool(rest.pop("deploy", False))


def _from_io_sidecar(d: Mapping[str, Any]) -> tuple[ModelSpec, dict]:
    """``interop.io.save_weights`` (``moderncnn convert``): architecture, num_classes, in_chans, overrides, deploy."""
    rest, heads, deploy = _split_overrides(d["architecture"], d.get("overrides") or {})
    for key in ("num_classes", "in_chans"):
        if d.get(key) is not None:
            heads[key] = d[key]
    form = "reparameterized" if deploy or d.get("deploy") else "train"
    return ModelSpec(d["architecture"], rest, form=form, **heads), {}


def _from_fused_sidecar(d: Mapping[str, Any]) -> tuple[ModelSpec, dict]:
    """``moderncnn fuse`` and ``export_model(..., "safetensors")``: model_name, overrides (all differing
    config fields), fused, features_only, out_indices (+ input_size, torch for exports)."""
    rest, heads, _ = _split_overrides(d["model_name"], d.get("overrides") or {})
    features = bool(d.get("features_only", False))
    out = d.get("out_indices") if features else None
    spec = ModelSpec(d["model_name"], rest, form="fused" if d.get("fused") else "train",
                     features_only=features, out_indices=out, **heads)
    return spec, {k: d[k] for k in ("input_size", "torch") if k in d}


def _from_run_config(d: Mapping[str, Any]) -> tuple[ModelSpec, dict]:
    """A training run's ``config.json``: model, model_kwargs, num_classes, in_chans (train form; all but
    ``model`` optional)."""
    rest, heads, deploy = _split_overrides(d["model"], d.get("model_kwargs") or {})
    heads.update({k: d[k] for k in ("num_classes", "in_chans") if k in d})
    return ModelSpec(d["model"], rest, form="reparameterized" if deploy else "train", **heads), {}


def _from_train_deploy(d: Mapping[str, Any]) -> tuple[ModelSpec, dict]:
    """The trainer's ``model_deploy.json`` (or its safetensors metadata ``config``): model, model_kwargs,
    num_classes, in_chans, fused_with ("fuse" or "reparameterize_model"), img_size, mean, std, ..."""
    rest, heads, _ = _split_overrides(d["model"], d.get("model_kwargs") or {})
    heads.update({k: d[k] for k in ("num_classes", "in_chans") if k in d})
    form = "fused" if d["fused_with"] == "fuse" else "reparameterized"
    extra = {k: v for k, v in d.items() if k not in ("model", "model_kwargs", "num_classes", "in_chans")}
    return ModelSpec(d["model"], rest, form=form, **heads), extra


def _from_train_deploy_metadata(meta: Mapping[str, Any]) -> tuple[ModelSpec, dict]:
    """Safetensors metadata of the trainer's ``model_deploy.safetensors``: format moderncnn-deploy, config."""
    return _from_train_deploy(_loads(meta["config"], "moderncnn-deploy metadata"))


def _from_checkpoint_metadata(meta: Mapping[str, Any]) -> tuple[ModelSpec, dict]:
    """Safetensors metadata of training checkpoints (``last``/``best``): model, model_config (the whole
    config as JSON)."""
    from ..registry import get_entry

    name = meta["model"]
    full = _loads(meta["model_config"], "checkpoint metadata model_config")
    base = get_entry(name).cfg
    differing = {k: v for k, v in full.items() if _tuples(v) != getattr(base, k, object())}
    rest, heads, deploy = _split_overrides(name, differing)
    return ModelSpec(name, rest, form="reparameterized" if deploy else "train", **heads), {}


_LEGACY: tuple[tuple[Callable[[Mapping], bool], Callable[[Mapping], tuple[ModelSpec, dict]]], ...] = (
    (lambda d: "architecture" in d and "overrides" in d, _from_io_sidecar),
    (lambda d: "model_name" in d and "fused" in d, _from_fused_sidecar),
    (lambda d: "fused_with" in d and "model" in d, _from_train_deploy),
    (lambda d: d.get("format") == "moderncnn-deploy" and "config" in d, _from_train_deploy_metadata),
    (lambda d: d.get("format") == "moderncnn-weights" and "model_config" in d, _from_checkpoint_metadata),
    (lambda d: isinstance(d.get("model"), str) and "format" not in d, _from_run_config),
)


__all__ = [
    "FORMS",
    "ModelSpec",
    "detect_form",
    "find_description",
    "missing_description",
    "read_description",
    "read_extra",
    "read_spec",
    "save_weights",
    "spec_metadata",
    "spec_path",
    "write_spec",
]
