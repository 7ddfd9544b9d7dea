"""moderncnn.deploy: exact fusion of every registered model, export round trips, bench output, errors.

Fusion is checked after ``randomize_bn`` (calibrated statistics) in float64, so a wrong fold cannot
hide behind default statistics or float32 noise. Exports are reloaded (onnxruntime, torch.export.load,
create_model + load_weights) and compared with PyTorch at two batch sizes through the same file.
"""

from __future__ import annotations

import csv
import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import randomize_bn, rel_err
from moderncnn import create_model, list_models
from moderncnn.analysis.complexity import build_meta, count_params
from moderncnn.cli import main
from moderncnn.deploy import count_batchnorms, export_model, fuse, load_exported
from moderncnn.deploy.bench import benchmark, time_rotating, write_results
from moderncnn.deploy.export import validate
from moderncnn.errors import InputShapeError
from moderncnn.registry import get_entry

ALL = list_models()
PARAMS = {n: count_params(build_meta(n, num_classes=10)) for n in ALL}
# BatchNorms that no exact fold can remove, per family: RepLKNet's head BN feeds global pooling
# (not a conv); every other BN in the five families directly follows a conv or precedes a 1×1 conv.
REMAINING = {"replknet": 1}


def _shrunk(name: str) -> dict:
    """Overrides keeping every block type with at most two blocks per stage, so each stage keeps one block of
    its repeated (residual / identity-branch) kind."""
    cfg = get_entry(name).cfg
    out = {}
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if f.name in ("depths", "layers", "num_blocks") and isinstance(v, tuple):
            if not getattr(cfg, "group_layers", ()):  # RepVGG's grouped layers are indexed by depth
                out[f.name] = tuple(min(n, 2) for n in v)
        elif f.name == "stages" and v and hasattr(v[0], "repeats"):  # EfficientNetV2 stage rows
            out[f.name] = tuple(
                dataclasses.replace(st, repeats=min(st.repeats, 2)) if dataclasses.is_dataclass(st)
                else st._replace(repeats=min(st.repeats, 2))
                for st in v
            )
        elif f.name == "arch" and v and all(len(row) == 4 for row in v):  # MobileNeXt rows: t, c, n, s
            out[f.name] = tuple((t, c, min(n, 2), st) for t, c, n, st in v)
    return out


def _smallest_per_family() -> list[str]:
    best: dict[str, str] = {}
    for n in ALL:
        if n.startswith("replknet_31b_k"):  # the kernel-size study (tests/test_ablations.py), not the family's face
            continue
        fam = get_entry(n).family
        if fam not in best or PARAMS[n] < PARAMS[best[fam]]:
            best[fam] = n
    return sorted(best.values())


# the default run covers each family's smallest model plus the structural variants (TF 'same' padding,
# grouped and SE RepVGG, the ResNet end and the single-BN step of the roadmap, NHWC-MLP ConvNeXt);
# every other registered model runs in the slow suite
DEFAULT_FUSE = (set(_smallest_per_family()) - {"efficientnetv2_b0"}) | {  # float64 depthwise is slow: one B0
    "tf_efficientnetv2_b0", "repvgg_b1g4", "repvgg_d2se", "convnext_roadmap_0_resnet50",
    "convnext_roadmap_10_fewer_norms", "convnext_roadmap_12_convnext", "convnext_tiny",
}


def _fuse_params(names):
    return [n if n in DEFAULT_FUSE else pytest.param(n, marks=pytest.mark.slow) for n in names]


def _perturb(model: nn.Module) -> None:
    """Make layer scales and biases non-trivial (ConvNeXt's γ starts at 1e-6, hiding its fold)."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("gamma") or name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.5)


# -- fuse: hand-built cases with known answers ----------------------------------------------------------
class SameConv(nn.Conv2d):
    """TF-'same' conv: pads inside forward (asymmetric), as EfficientNetV2's ported convs do."""

    def forward(self, x):
        return F.conv2d(F.pad(x, [0, 1, 0, 1]), self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class Toy(nn.Module):
    in_chans, min_input_size = 3, 8

    def __init__(self):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)  # conv with bias -> BN
        self.c2, self.b2 = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), nn.BatchNorm2d(8)  # dw
        self.c3, self.b3 = SameConv(8, 16, 3, stride=2, groups=2, bias=False), nn.BatchNorm2d(16)
        self.pre = nn.BatchNorm2d(16)  # after a ReLU, before an unpadded grouped 1×1: folds forward
        self.c4 = nn.Conv2d(16, 16, 1, groups=4)
        self.pre_pad = nn.BatchNorm2d(16)  # after a ReLU, before a padded 3×3: must stay
        self.c5 = nn.Conv2d(16, 16, 3, padding=1)
        self.c6, self.b6 = nn.Conv2d(16, 16, 1), nn.BatchNorm2d(16)  # c6's output also feeds a shortcut: stays
        self.seq = nn.Sequential(nn.Conv2d(16, 16, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(), nn.Dropout(0.5))
        self.head = nn.BatchNorm2d(16)  # feeds pooling: stays

    def forward(self, x):
        x = torch.relu(self.b1(self.c1(x)))
        x = torch.relu(self.b3(self.c3(self.b2(self.c2(x)))))
        x = torch.relu(self.c4(self.pre(x)))
        x = self.c5(self.pre_pad(x))
        y = self.c6(x)
        x = self.seq(self.b6(y) + y)
        return self.head(x).mean((2, 3))


def test_fuse_rules_on_a_hand_built_net():
    model = Toy().double()
    randomize_bn(model, input_size=16)
    x = torch.randn(3, 3, 16, 16, dtype=torch.float64)
    fused, report = fuse(model, report=True)
    assert rel_err(fused(x), model(x)) < 1e-12
    assert report.folded_into_previous_conv == 4  # b1, b2, b3, seq.1
    assert report.folded_into_next_conv == 1  # pre -> c4
    assert sorted(report.remaining) == ["b6", "head", "pre_pad"]
    assert count_batchnorms(fused) == 3 and count_batchnorms(model) == 8
    assert isinstance(fused.seq[3], nn.Identity) and report.dropped == 1
    assert not fused.training and fused.is_fused and model.training is False
    again, report2 = fuse(fused, report=True)  # fusing twice is a no-op
    assert report2.folded == 0 and again.state_dict().keys() == fused.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), fused.state_dict().values()))


def test_fuse_leaves_the_original_alone():
    model = Toy()
    model.train()
    fused = fuse(model)
    assert model.training and count_batchnorms(model) == 8 and not fused.training


# -- fuse: every registered model ----------------------------------------------------------------------
@pytest.mark.parametrize("name", _fuse_params(ALL))
def test_fuse_exact_every_model(name):
    model = create_model(name, num_classes=10, **_shrunk(name)).double()
    _perturb(model)
    # calibrate on 2×2 maps or larger at the last stage: BN statistics of 1×1 maps over a few samples have
    # near-zero variance, which blows activations up to ~1e20 and leaves only cancellation noise to compare
    size = max(64, 2 * model.min_input_size)
    randomize_bn(model, batches=4, input_size=size)
    x = torch.randn(2, 3, size, size, dtype=torch.float64)
    fused, report = fuse(model, report=True)
    with torch.no_grad():
        assert rel_err(fused(x), model(x)) <= 1e-7
    family = get_entry(name).family
    assert count_batchnorms(fused) == REMAINING.get(family, 0), str(report)
    assert not any(isinstance(m, nn.Dropout) for m in fused.modules())
    scales = sum(isinstance(getattr(m, "gamma", None), nn.Parameter) for m in model.modules())
    assert report.folded_layer_scales == scales
    assert not any(isinstance(getattr(m, "gamma", None), nn.Parameter) for m in fused.modules())


@pytest.mark.parametrize(
    "overrides, target",
    [
        ({}, nn.Conv2d),  # ConvNeXt's own step: no norm after the last 1×1
        ({"norm": "bn"}, nn.Conv2d),
        ({"fewer_norms": False}, nn.LayerNorm),  # a LayerNorm after the last 1×1 takes γ in its affine
        ({"fewer_norms": False, "norm": "bn"}, nn.BatchNorm2d),  # into the BN, which then folds into the conv
    ],
)
def test_fuse_folds_layer_scale_into_whatever_precedes_it(overrides, target):
    model = create_model("convnext_roadmap_12_convnext", num_classes=10, depths=(1, 1, 1, 1), **overrides).double()
    _perturb(model)
    randomize_bn(model, input_size=64)
    blocks = [m for m in model.modules() if hasattr(m, "layer_scale_target")]
    assert blocks and all(isinstance(b.layer_scale_target(), target) for b in blocks)
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    fused, report = fuse(model, report=True)
    assert report.folded_layer_scales == len(blocks)
    with torch.no_grad():
        assert rel_err(fused(x), model(x)) <= 1e-10


FEATURES_DEFAULT = {"repvgg_a0", "mobilenext_035", "replknet_31b"}  # the rest of each family: -m slow


@pytest.mark.parametrize(
    "name", [n if n in FEATURES_DEFAULT else pytest.param(n, marks=pytest.mark.slow) for n in _smallest_per_family()]
)
def test_fuse_features_only(name):
    model = create_model(name, features_only=True, **_shrunk(name)).double()
    _perturb(model)
    size = max(32, model.min_input_size)
    randomize_bn(model, input_size=size)
    x = torch.randn(2, 3, size, size, dtype=torch.float64)
    fused = fuse(model)
    with torch.no_grad():
        outs, refs = fused(x), model(x)
    assert len(outs) == len(refs)
    assert max(rel_err(a, b) for a, b in zip(outs, refs)) <= 1e-7


# -- export ---------------------------------------------------------------------------------------------
# one small model per family; (name, overrides)
EXPORT_MODELS = {
    "convnext": ("convnext_atto", {}),
    "repvgg": ("repvgg_a0", {}),
    "efficientnetv2": ("tf_efficientnetv2_b0", {}),
    "mobilenext": ("mobilenext_035", {}),
    "replknet": ("replknet_31b", "shrunk"),  # one block per stage, full widths and kernels
}
DEFAULT_EXPORTS = {("convnext", "onnx"), ("repvgg", "torch-export")}  # the rest: -m slow (≈15 s each)


def _export_cases():
    for fam in EXPORT_MODELS:
        for fmt in ("onnx", "torch-export"):
            marks = () if (fam, fmt) in DEFAULT_EXPORTS else (pytest.mark.slow,)
            yield pytest.param(fam, fmt, marks=marks, id=f"{fam}-{fmt}")


def _export_model(family: str) -> nn.Module:
    name, overrides = EXPORT_MODELS[family]
    if name not in ALL:
        pytest.skip(f"{name} is not registered yet (the {family} family has not landed)")
    if overrides == "shrunk":
        overrides = _shrunk(name)
    model = create_model(name, num_classes=10, **overrides)
    _perturb(model)
    randomize_bn(model, input_size=64)
    return model


@pytest.mark.parametrize("family,fmt", list(_export_cases()))
def test_export_matches_pytorch(family, fmt, tmp_path):
    model = _export_model(family)
    result = export_model(model, fmt, tmp_path / "m", img_size=64, batch=2, log=None)
    assert set(result.errors) == {1, 2}  # two batch sizes through the same file
    assert max(result.errors.values()) <= 1e-4, result.errors
    assert result.fuse_error is not None and result.fuse_error <= 1e-4
    loaded = load_exported(result.path)
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        ref = model.eval()(x)
    assert rel_err(loaded(x), ref) <= 1e-4  # a third batch size, against the unfused model
    with pytest.raises(InputShapeError, match=r"\(batch, 3, 64, 64\)"):
        validate(loaded, model, [torch.randn(2, 3, 48, 48)])


def test_safetensors_export_round_trip(tmp_path, capsys):
    name = "repvgg_a0" if "repvgg_a0" in ALL else "convnext_atto"
    model = create_model(name, num_classes=10)  # training mode, unfused
    _perturb(model)
    randomize_bn(model, input_size=64)
    model.train()
    result = export_model(model, "safetensors", tmp_path / "w", img_size=64)
    out = capsys.readouterr().out
    assert "fused the model first" in out and "training mode" in out
    assert result.path.suffix == ".safetensors" and result.path.with_suffix(".json").is_file()
    side = json.loads(result.path.with_suffix(".json").read_text())
    # the description (interop.spec): name, the head, the fused form, nothing else overridden
    spec = side["spec"]
    assert spec["name"] == name and spec["num_classes"] == 10 and spec["overrides"] == {} and spec["form"] == "fused"
    restored = load_exported(result.path)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert rel_err(restored(x), model.eval()(x)) <= 1e-5
    with pytest.raises(InputShapeError, match=r"\(batch, 3, 64, 64\)"):
        validate(restored, model, [torch.randn(2, 1, 64, 64)])


def test_export_rejects_a_wrong_example_input(tmp_path):
    model = create_model("convnext_atto", num_classes=10)
    with pytest.raises(InputShapeError, match="3 input channels"):
        export_model(model, "safetensors", tmp_path / "w", example_input=torch.randn(2, 1, 64, 64), log=None)


# -- CLI fuse -------------------------------------------------------------------------------------------
def _bn_model_name() -> str:
    for n in ("repvgg_a0", "mobilenext_035", "tf_efficientnetv2_b0"):
        if n in ALL:
            return n
    return "convnext_atto"


def test_cli_fuse_training_checkpoint(tmp_path):
    name = _bn_model_name()
    model = create_model(name, num_classes=7)
    _perturb(model)
    randomize_bn(model, input_size=64)
    ckpt = tmp_path / "run"
    ckpt.mkdir()
    torch.save({"state_dict": model.state_dict(), "epoch": 3}, ckpt / "last.pth")
    (ckpt / "config.json").write_text(json.dumps({"model": name, "num_classes": 7}))
    out = tmp_path / "fused.safetensors"
    assert main(["fuse", str(ckpt), "--out", str(out)]) == 0
    restored = load_exported(out)
    assert count_batchnorms(restored) == REMAINING.get(get_entry(name).family, 0)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert rel_err(restored(x), model.eval()(x)) <= 1e-5


def test_cli_fuse_needs_a_model_name(tmp_path, capsys):
    from safetensors.torch import save_file

    save_file(create_model("convnext_atto").state_dict(), str(tmp_path / "w.safetensors"))
    assert main(["fuse", str(tmp_path / "w.safetensors"), "--out", str(tmp_path / "f")]) == 2
    assert "--model" in capsys.readouterr().err


# -- bench ----------------------------------------------------------------------------------------------
def test_bench_writes_csv_and_json(tmp_path):
    pytest.importorskip("timm")
    rows = benchmark(["convnext_atto"], img_size=32, batch=2, form="both", vs_timm=True,
                     warmup=1, iters=1, rounds=2, log=None)
    assert [(r.impl, r.form) for r in rows] == [
        ("moderncnn", "train"), ("timm", "train"), ("moderncnn", "deploy"), ("timm", "deploy")]
    paths = write_results(rows, tmp_path / "res", {"command": "test"})
    with paths[0].open() as fh:
        table = list(csv.DictReader(fh))
    data = json.loads(paths[1].read_text())
    assert len(table) == len(data["results"]) == 4 and data["meta"]["command"] == "test"
    for row, rec in zip(table, data["results"]):
        ips, ms = float(row["img_per_s"]), float(row["ms_per_batch"])
        assert ips == pytest.approx(rec["img_per_s"]) and ips * ms / 1e3 == pytest.approx(2)
        assert float(row["params_m"]) == pytest.approx(3.69552, abs=0.02)
        assert float(row["gmacs"]) == pytest.approx(rec["gmacs"]) and rec["gmacs"] > 0
    ours, theirs = data["results"][0], data["results"][1]
    assert ours["vs_timm"] == pytest.approx(ours["img_per_s"] / theirs["img_per_s"])


def test_time_rotating_calls_and_order():
    log = []
    fns = {k: (lambda k=k: log.append(k)) for k in "abc"}
    ms = time_rotating(fns, 3, warmup=2, calls=2, rewarm=True)
    assert set(ms) == set("abc") and all(v >= 0 for v in ms.values())
    assert log[:6] == list("abcabc")  # warm-up
    rounds = log[6:]
    assert len(rounds) == 3 * 3 * (1 + 2)  # rounds × functions × (rewarm + timed calls)
    assert rounds[0::3] == list("abc" "bca" "cab")  # who goes first rotates


def test_cli_bench_cpu_and_absent_cuda(tmp_path, capsys):
    assert main(["bench", "convnext_atto", "--img-size", "32", "-b", "2", "--form", "deploy",
                 "--warmup", "1", "--iters", "1", "--rounds", "1", "--out", str(tmp_path / "b.csv")]) == 0
    assert json.loads((tmp_path / "b.json").read_text())["results"][0]["form"] == "deploy"
    capsys.readouterr()
    assert main(["bench", "convnext_atto", "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert "no CUDA device" in err and "--device cpu" in err


def test_cli_bench_takes_timm_benchmark_flags(tmp_path):
    """timm's benchmark.py spellings: --bench inference, --precision amp_bfloat16, --num-*-iter."""
    assert main(["bench", "convnext_atto", "--img-size", "32", "-b", "2", "--bench", "inference",
                 "--precision", "amp_bfloat16", "--num-warm-iter", "1", "--num-bench-iter", "1", "--rounds", "1",
                 "--out", str(tmp_path / "b")]) == 0
    rec = json.loads((tmp_path / "b.json").read_text())["results"][0]
    assert rec["mode"] == "infer" and rec["precision"] == "bf16"
    with pytest.raises(SystemExit):  # a pure float16 cast is not autocast: refused, not silently remapped
        main(["bench", "convnext_atto", "--precision", "float16"])
