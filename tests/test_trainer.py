"""The training loop: exact resume, NaN stop, Ctrl-C, run-folder files, progressive stages, deploy export."""

from __future__ import annotations

import csv
import json
import os
import signal

import pytest
import torch
import yaml
from safetensors.torch import load_file

from moderncnn import create_model
from moderncnn.data.datasets import TensorImageDataset
from moderncnn.errors import CheckpointError
from moderncnn.interop.spec import read_description
from moderncnn.training.config import TrainConfig, from_dict
from moderncnn.training.scheduler import LRSchedule
from moderncnn.training.trainer import Callback, TrainingDivergedError, train

TINY_CONVNEXT = {"depths": [1, 1], "dims": [8, 16]}  # 2 stages, LayerNorm only, downsamples by 8


def make_dataset(n: int, *, size: int = 16, chans: int = 1, classes: int = 4, seed: int = 0) -> TensorImageDataset:
    """Synthetic uint8 images whose class sets the brightness of one quadrant (learnable, deterministic)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    images = torch.randint(0, 60, (n, chans, size, size), generator=g, dtype=torch.uint8)
    half = size // 2
    for i, c in enumerate(labels.tolist()):
        r, q = divmod(c % 4, 2)
        images[i, :, r * half:(r + 1) * half, q * half:(q + 1) * half] += 150
    return TensorImageDataset(images, labels, tuple(f"class{i}" for i in range(classes)), name="synthetic")


def tiny_config(tmp_path, name: str = "run", **kw) -> TrainConfig:
    base = dict(model="convnext_atto", model_kwargs=TINY_CONVNEXT, img_size=16, train_crop="pad", crop_pct=1.0,
                mean=[0.3], std=[0.3], epochs=2, batch_size=8, lr=2e-3, opt="adamw", weight_decay=0.05,
                workers=0, no_progress=True, log_interval=1000, output=str(tmp_path / name), fuse=False,
                plots=False)
    base.update(kw)
    return from_dict(base)


def data(n_train: int = 48, n_val: int = 16, **kw):
    return make_dataset(n_train, **kw), make_dataset(n_val, seed=1, **kw)


class StopAt(Callback):
    """Simulate Ctrl-C at an optimizer step: raise KeyboardInterrupt, or deliver a real SIGINT."""

    def __init__(self, step: int, real_signal: bool = False) -> None:
        self.step, self.real_signal = step, real_signal

    def on_step_end(self, trainer) -> None:
        if trainer.global_step == self.step:
            if self.real_signal:
                os.kill(os.getpid(), signal.SIGINT)
            else:
                raise KeyboardInterrupt


def weights(run_dir, tag="last"):
    return load_file(str(run_dir / f"{tag}.safetensors")), load_file(str(run_dir / f"{tag}_ema.safetensors"))


# Everything that draws random numbers is on: augmentation (pad-crop, flip, RandAugment), mixup/cutmix,
# dropout, drop path, EMA, gradient accumulation and clipping.
RANDOM_EVERYTHING = dict(aa="rand-m5-n2-mstd0.5", mixup=0.4, cutmix=0.4, drop=0.2, drop_path=0.2, model_ema=True,
                         model_ema_decay=0.9, grad_accum_steps=2, batch_size=4, clip_grad=1.0, warmup_epochs=0.5)


def test_resume_is_exact_mid_epoch_and_across_epochs(tmp_path, capsys):
    tr, va = data()  # 48 images / (4 × 2 accumulation) = 6 optimizer steps per epoch, 12 in all
    straight = train(tiny_config(tmp_path, "straight", **RANDOM_EVERYTHING), train_dataset=tr, val_dataset=va)
    assert straight.global_step == 12 and not straight.interrupted

    cfg = tiny_config(tmp_path, "stopped", **RANDOM_EVERYTHING)
    first = train(cfg, train_dataset=tr, val_dataset=va, callbacks=[StopAt(2)])  # Ctrl-C mid-epoch 1
    assert first.interrupted and first.global_step == 2
    out = capsys.readouterr().out
    assert "interrupted at epoch 1, step 2" in out and f"moderncnn train --resume {cfg.output}" in out
    second = train(cfg.replace(resume=cfg.output, max_steps=9), train_dataset=tr, val_dataset=va)  # into epoch 2
    assert second.global_step == 9 and not second.interrupted
    state = torch.load(tmp_path / "stopped" / "last.state.pt", weights_only=True)
    assert (state["epoch"], state["step_in_epoch"], state["global_step"]) == (1, 3, 9)
    third = train(cfg.replace(resume=cfg.output), train_dataset=tr, val_dataset=va)
    assert third.global_step == 12

    (a, a_ema), (b, b_ema) = weights(tmp_path / "straight"), weights(tmp_path / "stopped")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
        assert torch.equal(a_ema[k], b_ema[k]), k
    # the per-epoch metrics agree as well, and the resumed CSV holds each epoch once
    rows = [list(csv.DictReader(open(tmp_path / d / "metrics.csv"))) for d in ("straight", "stopped")]
    assert [r["epoch"] for r in rows[1]] == ["0", "1"]
    assert [r["eval_top1"] for r in rows[0]] == [r["eval_top1"] for r in rows[1]]
    assert [r["train_loss"] for r in rows[0]] == [r["train_loss"] for r in rows[1]]
    assert [r["ema_eval_top1"] for r in rows[0]] == [r["ema_eval_top1"] for r in rows[1]]


def test_real_sigint_finishes_the_step_and_saves(tmp_path, capsys):
    tr, va = data()
    cfg = tiny_config(tmp_path, epochs=1)
    result = train(cfg, train_dataset=tr, val_dataset=va, callbacks=[StopAt(3, real_signal=True)])
    assert result.interrupted
    state = torch.load(tmp_path / "run" / "last.state.pt", weights_only=True)
    assert (state["global_step"], state["step_in_epoch"]) == (3, 3)
    assert "resume with" in capsys.readouterr().out
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored


class NanAt(Callback):
    def __init__(self, step: int, run_dir) -> None:
        self.step, self.run_dir, self.snapshot = step, run_dir, None

    def on_loss(self, trainer, loss):
        if trainer.global_step == self.step:
            self.snapshot = {p.name: p.read_bytes() for p in self.run_dir.iterdir() if p.name.startswith("last")}
            return loss * float("nan")
        return None


def test_nan_loss_names_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    tr, va = data()
    cfg = tiny_config(tmp_path, checkpoint_interval=2)
    cb = NanAt(4, tmp_path / "run")  # the 5th optimizer step (epoch 1, batch 5) produces NaN
    with pytest.raises(TrainingDivergedError, match=r"nan at optimizer step 5 \(epoch 1, batch 5 of 6\)") as err:
        train(cfg, train_dataset=tr, val_dataset=va, callbacks=[cb])
    assert "last.state.pt (global step 4)" in str(err.value)
    after = {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir() if p.name.startswith("last")}
    assert cb.snapshot and after == cb.snapshot  # not a byte changed
    state = torch.load(tmp_path / "run" / "last.state.pt", weights_only=True)
    assert state["global_step"] == 4
    assert all(torch.isfinite(v).all() for v in load_file(str(tmp_path / "run" / "last.safetensors")).values()
               if v.is_floating_point())
    assert not any(p.name.startswith(".") for p in (tmp_path / "run").iterdir())  # no temp files left
    events = [json.loads(line)["event"] for line in open(tmp_path / "run" / "log.jsonl")]
    assert "diverged" in events


def test_checkpoint_of_another_model_is_refused(tmp_path):
    tr, va = data()
    cfg = tiny_config(tmp_path, max_steps=1)
    train(cfg, train_dataset=tr, val_dataset=va)
    wider = cfg.replace(resume=cfg.output, model_kwargs={"depths": [1, 1], "dims": [8, 24]})
    with pytest.raises(CheckpointError, match="does not belong to this model.*differently shaped"):
        train(wider, train_dataset=tr, val_dataset=va)
    other = cfg.replace(resume=cfg.output, model="repvgg_a0", model_kwargs={"num_blocks": [1, 1, 1, 1]}, img_size=32)
    with pytest.raises(CheckpointError, match="trained with model 'convnext_atto', this run builds 'repvgg_a0'"):
        train(other, train_dataset=make_dataset(48, size=32), val_dataset=make_dataset(16, size=32))


def test_run_folder_files_and_fused_deploy_model(tmp_path):
    tr, va = data(size=32)
    kwargs = {"num_blocks": [1, 1, 1, 1], "width_multiplier": [0.125, 0.125, 0.125, 0.0625]}
    cfg = tiny_config(tmp_path, model="repvgg_a0", model_kwargs=kwargs, img_size=32, opt="sgd", lr=0.05,
                      weight_decay=1e-4, model_ema=True, fuse=True, epochs=2, plots=True)
    result = train(cfg, train_dataset=tr, val_dataset=va)
    run = tmp_path / "run"
    # config.yaml is the resolved config and round-trips
    resolved = from_dict(yaml.safe_load((run / "config.yaml").read_text()))
    assert resolved.model_kwargs == kwargs and resolved.lr == 0.05 and resolved.output == str(run)
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert list(rows[0])[:6] == ["epoch", "train_loss", "eval_loss", "eval_top1", "eval_top5", "lr"]
    assert [r["epoch"] for r in rows] == ["0", "1"] and rows[-1]["img_size"] == "32"
    assert float(rows[-1]["eval_top1"]) == pytest.approx(result.last_metrics["eval_top1"])
    events = [json.loads(line)["event"] for line in open(run / "log.jsonl")]
    assert events[0] == "start" and events.count("epoch") == 2 and "deploy" in events and events[-1] == "end"
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for name in ("last.safetensors", "last_ema.safetensors", "last.state.pt", "best.safetensors"):
        assert (run / name).is_file(), name
    # the deploy model: RepVGG fuses exactly into create_model(..., deploy=True)
    spec, info = read_description(run / "model_deploy.safetensors")
    assert spec.form == "reparameterized" and spec.build().cfg.deploy is True  # loads into deploy=True
    assert (run / "model_deploy.json").is_file() and read_description(run / "model_deploy.json")[0] == spec
    assert info["rel_err"] < 1e-5 and info["train_ms"] > 0 and info["deploy_ms"] > 0
    deployed = create_model("repvgg_a0", num_classes=4, in_chans=1, deploy=True,
                            **{k: tuple(v) for k, v in kwargs.items()})
    deployed.load_state_dict(load_file(str(run / "model_deploy.safetensors")))
    source = create_model("repvgg_a0", num_classes=4, in_chans=1, **{k: tuple(v) for k, v in kwargs.items()})
    which = "last_ema" if info["weights"] == "ema" else "last"
    source.load_state_dict(load_file(str(run / f"{which}.safetensors")))
    x = torch.randn(4, 1, 32, 32)
    with torch.no_grad():
        ref, out = source.eval()(x), deployed.eval()(x)
    assert (out - ref).abs().max() <= 1e-5 * ref.abs().max()


class Record(Callback):
    def __init__(self) -> None:
        self.epochs: list[tuple[int, float, int]] = []
        self.lrs: list[float] = []

    def on_step_end(self, trainer) -> None:
        self.lrs.append(trainer.optimizer.param_groups[0]["lr"])

    def on_epoch_end(self, trainer, row) -> None:
        p = trainer.model.head.drop.p
        self.epochs.append((trainer.train_transform.img_size, p, row["batch_size"]))


def test_progressive_stages_change_size_dropout_and_batch(tmp_path):
    tr, va = data(size=24)
    rec = Record()
    cfg = tiny_config(tmp_path, epochs=4, progressive="paper", prog_stages=2, prog_size=[16, 24],
                      prog_dropout=[0.0, 0.3], prog_batch_sizes=[8, 4], img_size=None, plots=True)
    train(cfg, train_dataset=tr, val_dataset=va, callbacks=[rec])
    # paper Algorithm 1 with M = 2: stage 0 at the minimum, stage 1 at the maximum
    assert rec.epochs == [(16, 0.0, 8), (16, 0.0, 8), (24, 0.3, 4), (24, 0.3, 4)]
    assert (tmp_path / "run" / "progressive.png").is_file()
    rows = list(csv.DictReader(open(tmp_path / "run" / "metrics.csv")))
    assert [r["img_size"] for r in rows] == ["16", "16", "24", "24"] and [r["stage"] for r in rows] == list("0011")
    # stage 0 has 6 steps per epoch (batch 8), stage 1 has 12 (batch 4): the cosine schedule is laid out in
    # nominal (batch-8) steps and a stage-1 step advances it by half a step
    sched = LRSchedule(2e-3, 4 * 6, 6, sched="cosine")
    assert rec.lrs[:12] == [sched.lr_at(s) for s in range(12)]
    assert rec.lrs[12:14] == [sched.lr_at(12), sched.lr_at(12)]
    assert len(rec.lrs) == 12 + 24


def test_lr_base_is_scaled_by_the_global_batch(tmp_path):
    tr, va = data()
    rec = Record()
    # (linear: tiny_config trains with AdamW, whose default --lr-base-scale is sqrt, as timm's)
    cfg = tiny_config(tmp_path, lr=None, lr_base=0.1, lr_base_size=256, lr_base_scale="linear", grad_accum_steps=2,
                      batch_size=4, sched="constant", max_steps=2, epochs=1)
    train(cfg, train_dataset=tr, val_dataset=va, callbacks=[rec])
    assert rec.lrs == [pytest.approx(0.1 * 8 / 256)] * 2  # 4 per step × 2 accumulation × 1 process


def _initial_weights(cfg):
    torch.manual_seed(cfg.seed)  # the trainer seeds, then builds the model
    kw = {k: tuple(v) for k, v in cfg.model_kwargs.items()}
    return create_model(cfg.model, num_classes=4, in_chans=1, **kw).state_dict()


@pytest.mark.parametrize("opts", [dict(amp=True, channels_last=True),
                                  pytest.param(dict(compile=True), marks=pytest.mark.slow)])
def test_bf16_autocast_channels_last_and_compile_train(tmp_path, opts):
    tr, va = data()
    cfg = tiny_config(tmp_path, max_steps=3, epochs=1, **opts)
    result = train(cfg, train_dataset=tr, val_dataset=va)
    assert result.global_step == 3
    # the reported metrics are those of the saved weights on the validation images, evaluated the same way
    from moderncnn.interop.spec import read_spec
    from moderncnn.training.evaluate import evaluate

    model = read_spec(tmp_path / "run" / "last.safetensors").build()
    model.load_state_dict(load_file(str(tmp_path / "run" / "last.safetensors")))
    x = (va.images.float() / 255 - 0.3) / 0.3
    batches = [(x[i:i + 8], va.targets[i:i + 8]) for i in range(0, len(x), 8)]
    ref = evaluate(model, batches, amp=opts.get("amp", False), channels_last=opts.get("channels_last", False))
    assert abs(result.last_metrics["eval_top1"] - ref["top1"]) <= 100 / len(x)  # at most one bf16 near-tie
    assert result.last_metrics["eval_loss"] == pytest.approx(ref["loss"], rel=2e-2)
    before, after = _initial_weights(cfg), load_file(str(tmp_path / "run" / "last.safetensors"))
    assert before.keys() == after.keys()
    assert all(torch.isfinite(v).all() for v in after.values())
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_max_steps_mid_epoch_evaluates_the_current_model(tmp_path):
    # epoch 1 ends without an evaluation (--eval-interval 2), --max-steps stops inside epoch 2: the result's last
    # metrics must be an evaluation of the model at the stop, not epoch 1's row (which has none)
    tr, va = data()
    result = train(tiny_config(tmp_path, epochs=2, eval_interval=2, max_steps=7), train_dataset=tr, val_dataset=va)
    assert result.global_step == 7
    assert "eval_top1" in result.last_metrics


@pytest.mark.slow
def test_compile_trains_through_progressive_image_sizes(tmp_path):
    # two progressive stages at 16 and 24 px under --compile: each size compiles a static graph (with automatic
    # dynamic shapes the second size failed inside Inductor)
    tr, va = data(size=24)
    cfg = tiny_config(tmp_path, compile=True, epochs=2, progressive="paper", prog_stages=2, prog_size=(16, 24),
                      img_size=None)
    result = train(cfg, train_dataset=tr, val_dataset=va)
    assert result.global_step == 2 * len(tr) // 8
    assert "eval_top1" in result.last_metrics
