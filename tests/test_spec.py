"""The model description (interop.spec): round trips in every form, the files of moderncnn 0.1.0, errors,
and the deploy step shared by ``moderncnn fuse`` and the trainer."""

from __future__ import annotations

import ast
import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from conftest import randomize_bn, rel_err
from moderncnn import create_model, fuse, reparameterize_model
from moderncnn.deploy import deploy_model, load_checkpoint_model
from moderncnn.errors import CheckpointError, ConfigError
from moderncnn.interop.spec import (
    ModelSpec,
    read_extra,
    read_spec,
    save_weights,
    spec_metadata,
    write_spec,
)

SRC = Path(__file__).resolve().parents[1] / "src" / "moderncnn"


# small widths and depths keep these tests fast; they also exercise tuple-valued overrides
SMALL = {"repvgg_a0": {"num_blocks": (1, 1, 1, 1), "width_multiplier": (0.25, 0.25)},
         "convnext_atto": {"depths": (1, 1, 1, 1), "dims": (16, 32, 64, 128)}}


def _small(name: str) -> dict:
    return json.loads(json.dumps(SMALL[name]))  # as stored: lists


def _model(name: str, **kw) -> torch.nn.Module:
    model = create_model(name, **{**SMALL[name], **kw})
    randomize_bn(model, input_size=32)
    return model.eval()


def _same_outputs(a: torch.nn.Module, b: torch.nn.Module, in_chans: int = 3) -> float:
    x = torch.randn(2, in_chans, 32, 32)
    with torch.no_grad():
        return rel_err(a.eval()(x), b.eval()(x))


FORMS = {"train": lambda m: m, "reparameterized": reparameterize_model, "fused": fuse}


@pytest.mark.parametrize("form", list(FORMS))
@pytest.mark.parametrize("name, kw", [
    ("repvgg_a0", {"num_classes": 7}),
    ("convnext_atto", {"num_classes": 0, "in_chans": 1, "layer_scale_init_value": 0.5}),
])
def test_round_trip_every_form(tmp_path, name, kw, form):
    model = FORMS[form](_model(name, **kw))
    spec = ModelSpec.from_model(model)
    expected_form = "train" if form == "reparameterized" and name.startswith("convnext") else form
    assert spec.form == expected_form and spec.name == name
    assert spec.num_classes == kw["num_classes"] and spec.in_chans == kw.get("in_chans", 3)
    assert spec.overrides == {**_small(name), **{k: v for k, v in kw.items() if k == "layer_scale_init_value"}}
    path = save_weights(model, tmp_path / "w", extra={"img_size": 64})
    assert path == tmp_path / "w.safetensors" and (tmp_path / "w.json").is_file()
    assert read_spec(path) == spec and read_spec(tmp_path / "w.json") == spec
    assert read_extra(path) == {"img_size": 64}
    (tmp_path / "w.json").unlink()  # a lone weight file describes itself
    assert read_spec(path) == spec
    rebuilt = load_checkpoint_model(path)
    assert rebuilt.training == (spec.form == "train")
    assert _same_outputs(rebuilt, model, spec.in_chans) <= 1e-6


@pytest.mark.parametrize("form", ["train", "fused"])
def test_round_trip_features_only(tmp_path, form):
    model = _model("convnext_atto", features_only=True, out_indices=(1, 3))
    model = FORMS[form](model)
    spec = ModelSpec.from_model(model)
    assert spec.features_only and spec.out_indices == (1, 3) and spec.form == form
    write_spec(spec, tmp_path)  # a folder gets config.json
    assert json.loads((tmp_path / "config.json").read_text())["spec"]["out_indices"] == [1, 3]
    assert read_spec(tmp_path) == spec
    built = spec.build()
    built.load_state_dict(model.state_dict())
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        outs, ref = built(x), model(x)
    assert len(outs) == 2 and all(rel_err(a, b) <= 1e-6 for a, b in zip(outs, ref))


def test_spec_is_checked():
    with pytest.raises(ConfigError, match="form 'deployed'"):
        ModelSpec("repvgg_a0", {}, 10, 3, form="deployed")
    with pytest.raises(ConfigError, match="num_classes"):
        ModelSpec("repvgg_a0", {"num_classes": 10}, 10, 3)
    with pytest.raises(ConfigError, match="cannot be saved"):
        ModelSpec("repvgg_a0", {"act": torch.nn.ReLU}, 10, 3)
    with pytest.raises(ConfigError, match="not built by moderncnn.create_model"):
        ModelSpec.from_model(torch.nn.Conv2d(3, 3, 1))
    assert ModelSpec("convnext_atto", {"depths": (1, 1, 1, 1)}, 10, 3).overrides == {"depths": [1, 1, 1, 1]}


def test_nothing_describes_the_file(tmp_path):
    save_file(_model("convnext_atto").state_dict(), str(tmp_path / "w.safetensors"))
    with pytest.raises(CheckpointError, match=r"cannot tell which model .*w\.json.*--model NAME"):
        read_spec(tmp_path / "w.safetensors")
    (tmp_path / "w.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        read_spec(tmp_path / "w.safetensors")
    doc = {"format": "moderncnn-spec", "version": 99, "spec": {"name": "convnext_atto"}}
    (tmp_path / "w.json").write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match="newer moderncnn"):
        read_spec(tmp_path / "w.safetensors")
    doc = {"format": "moderncnn-spec", "version": 1, "spec": {"name": "convnext_atto", "form": "deploy"}}
    (tmp_path / "w.json").write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match=r"w\.json: model description: form 'deploy'"):
        read_spec(tmp_path / "w.safetensors")
    doc["spec"] = {"name": "convnext_atto"}  # head and channels default to the variant's
    (tmp_path / "w.json").write_text(json.dumps(doc))
    assert read_spec(tmp_path / "w.safetensors") == ModelSpec("convnext_atto", {}, 1000, 3)
    with pytest.raises(CheckpointError, match="does not exist"):
        read_spec(tmp_path / "absent.safetensors")


# -- files written by moderncnn 0.1.0, each written here by hand in its old format -------------------------
def _weights(tmp_path, model, name="w", metadata=None) -> Path:
    path = tmp_path / f"{name}.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path), metadata=metadata)
    return path


def test_legacy_convert_sidecar(tmp_path):
    """``moderncnn convert`` (interop.io.save_weights): architecture, num_classes, in_chans, overrides, deploy."""
    model = reparameterize_model(_model("repvgg_a0", num_classes=10))
    path = _weights(tmp_path, model)
    side = {"architecture": "repvgg_a0", "num_classes": 10, "in_chans": 3,
            "overrides": {"deploy": True, **_small("repvgg_a0")}, "deploy": True}
    path.with_suffix(".json").write_text(json.dumps(side))
    assert read_spec(path) == ModelSpec("repvgg_a0", _small("repvgg_a0"), 10, 3, form="reparameterized")
    assert _same_outputs(load_checkpoint_model(path), model) <= 1e-6


@pytest.mark.parametrize("export", [False, True])
def test_legacy_fuse_and_export_sidecar(tmp_path, export):
    """``moderncnn fuse`` and the safetensors export: model_name, overrides (every differing config field,
    the head included), fused, features_only, out_indices; the export added input_size and torch."""
    model = fuse(_model("convnext_atto", num_classes=7, layer_scale_init_value=0.5))
    path = _weights(tmp_path, model, metadata={"format": "pt", "moderncnn": "fused"})
    side = {"model_name": "convnext_atto",
            "overrides": {"num_classes": 7, "layer_scale_init_value": 0.5, **_small("convnext_atto")},
            "fused": True, "features_only": False, "out_indices": None}
    if export:
        side.update(input_size=[3, 64, 64], torch="2.9.0")
    path.with_suffix(".json").write_text(json.dumps(side))
    expected = ModelSpec("convnext_atto", {"layer_scale_init_value": 0.5, **_small("convnext_atto")}, 7, 3,
                         form="fused")
    assert read_spec(path) == expected
    assert read_extra(path) == ({"input_size": [3, 64, 64], "torch": "2.9.0"} if export else {})
    assert _same_outputs(load_checkpoint_model(path), model) <= 1e-6


def test_legacy_run_folder(tmp_path):
    """A training run's config.json (model, model_kwargs, num_classes, in_chans) and checkpoint metadata
    (format moderncnn-weights, model, model_config: the whole config)."""
    model = _model("convnext_atto", num_classes=5, in_chans=1, layer_scale_init_value=0.25)
    full = json.loads(json.dumps(dataclasses.asdict(model.cfg)))  # tuples -> lists, as json.dumps wrote it
    meta = {"format": "moderncnn-weights", "model": "convnext_atto", "model_config": json.dumps(full),
            "epoch": "3", "kind": "model"}
    last = _weights(tmp_path, model, "last", metadata=meta)
    kwargs = {"layer_scale_init_value": 0.25, **_small("convnext_atto")}
    expected = ModelSpec("convnext_atto", kwargs, 5, 1)
    assert read_spec(last) == expected  # the metadata alone
    (tmp_path / "config.json").write_text(json.dumps(
        {"model": "convnext_atto", "model_kwargs": kwargs, "num_classes": 5,
         "in_chans": 1}))
    assert read_spec(tmp_path) == expected
    assert _same_outputs(load_checkpoint_model(tmp_path), model, in_chans=1) <= 1e-6


@pytest.mark.parametrize("fused_with", ["fuse", "reparameterize_model"])
def test_legacy_trainer_deploy_files(tmp_path, fused_with):
    """The trainer's model_deploy.json and the moderncnn-deploy metadata of model_deploy.safetensors."""
    train = _model("repvgg_a0", num_classes=4)
    deployed = fuse(train) if fused_with == "fuse" else reparameterize_model(train)
    kwargs = _small("repvgg_a0") | ({} if fused_with == "fuse" else {"deploy": True})
    info = {"model": "repvgg_a0", "model_kwargs": kwargs, "num_classes": 4, "in_chans": 3, "img_size": 64,
            "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "classes": None, "weights": "raw",
            "fused_with": fused_with, "max_abs_err": 1e-6}
    path = _weights(tmp_path, deployed, "model_deploy",
                    metadata={"format": "moderncnn-deploy", "model": "repvgg_a0", "config": json.dumps(info)})
    form = "fused" if fused_with == "fuse" else "reparameterized"
    expected = ModelSpec("repvgg_a0", _small("repvgg_a0"), 4, 3, form=form)
    assert read_spec(path) == expected  # metadata alone
    assert read_extra(path)["img_size"] == 64 and read_extra(path)["mean"] == [0.5] * 3
    path.with_suffix(".json").write_text(json.dumps(info))
    assert read_spec(path) == expected
    assert _same_outputs(load_checkpoint_model(path), train) <= 1e-5


def test_metadata_spec_wins_over_a_stale_sidecar(tmp_path):
    model = _model("convnext_atto", num_classes=3)
    path = save_weights(model, tmp_path / "w")
    (tmp_path / "w.json").write_text(json.dumps({"model": "convnext_atto", "num_classes": 1000}))
    assert read_spec(path).num_classes == 3
    assert spec_metadata(read_spec(path))["format"] == "pt"


# -- the shared deploy step ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name, form, expected", [("repvgg_a0", "auto", "reparameterized"),
                                                   ("convnext_atto", "auto", "fused"),
                                                   ("repvgg_a0", "fused", "fused")])
def test_deploy_model(tmp_path, name, form, expected):
    model = _model(name, num_classes=6)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(3, 3, 32, 32)
    report = deploy_model(model, tmp_path / "deploy", x, form=form, spec_extra={"img_size": 64}, bench_batch=4,
                          rounds=2)
    assert model.training and all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert report.form == expected and report.spec.form == expected and report.bench_batch == 4
    assert report.rel_err <= 1e-5 and 0 <= report.max_abs_err <= report.rel_err * 1e3
    assert report.train_ms > 0 and report.deploy_ms > 0
    assert report.speedup == pytest.approx(report.train_ms / report.deploy_ms)
    assert (expected == "fused") == (report.fuse_report is not None)
    extra = read_extra(report.path)
    assert extra["img_size"] == 64 and extra["rel_err"] == report.rel_err and extra["form"] == expected
    restored = load_checkpoint_model(report.path)
    with torch.no_grad():
        assert rel_err(restored(x), model.eval()(x)) <= 1e-5


def test_deploy_model_rejects_an_unknown_form(tmp_path):
    with pytest.raises(ConfigError, match="deploy form 'onnx'"):
        deploy_model(_model("convnext_atto"), tmp_path / "d", torch.randn(1, 3, 32, 32), form="onnx")


# -- layering --------------------------------------------------------------------------------------------------
def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add("." * node.level + node.module)
        elif isinstance(node, ast.ImportFrom):
            names.update("." * node.level + a.name for a in node.names)
    return names


def test_interop_never_imports_factory():
    """factory -> interop -> registry: no module of interop imports factory, even inside a function."""
    for path in sorted((SRC / "interop").glob("*.py")):
        assert not any(m.endswith("factory") for m in _imports(path)), path.name
    assert "..registry" in _imports(SRC / "interop" / "spec.py")
