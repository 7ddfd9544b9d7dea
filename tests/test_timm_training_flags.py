"""The training flags a timm user reaches for (issue 12), each checked against timm 1.0 as the oracle: lr-base
scaling, LAMB/LARS/AdamP and torch's optimizers under timm's names, the schedules (tanh, multistep, plateau,
poly, cooldown), layer-wise lr decay, BCE loss, repeated augmentation, --dist-bn, float16 AMP with a GradScaler,
TensorBoard/W&B logging and the evaluation progress bar."""

from __future__ import annotations

import copy
import csv
import socket
import sys
import warnings

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file
from torch import nn

from moderncnn import create_model
from moderncnn.training.adaptive import AdamP
from moderncnn.training.config import TrainConfig
from moderncnn.training.distributed import DistInfo, EpochSampler, distribute_bn
from moderncnn.training.loss import BinaryCrossEntropy
from moderncnn.training.optim import create_optimizer, default_lr_base_scale, layer_ids, resolve_lr
from moderncnn.training.scheduler import LRSchedule
from moderncnn.training.trainer import Callback, Trainer, train
from test_trainer import data, tiny_config

timm = pytest.importorskip("timm")
from timm.optim import create_optimizer_v2  # noqa: E402
from timm.scheduler import create_scheduler_v2  # noqa: E402


# -- --lr-base-scale ----------------------------------------------------------------------------------------------
def test_lr_base_scale_defaults_like_timm():
    # timm train.py: sqrt when the optimizer name contains "ada" or "lamb", linear otherwise
    assert [default_lr_base_scale(o) for o in ("sgd", "momentum", "lars", "rmsprop", "rmsproptf")] == ["linear"] * 5
    assert [default_lr_base_scale(o) for o in ("adam", "adamw", "adamp", "nadam", "radam", "adagrad", "lamb")] == [
        "sqrt"] * 7
    assert resolve_lr(0.1, 1024, 256, "sgd") == pytest.approx(0.4)
    assert resolve_lr(1e-3, 1024, 256, "adamw") == pytest.approx(2e-3)
    assert resolve_lr(1e-3, 1024, 256, "adamw", "linear") == pytest.approx(4e-3)
    assert resolve_lr(0.1, 1024, 256, "sgd", "sqrt") == pytest.approx(0.2)


class Record(Callback):
    def __init__(self) -> None:
        self.lrs: list[list[float]] = []

    def on_step_end(self, trainer) -> None:
        self.lrs.append([g["lr"] for g in trainer.optimizer.param_groups])


def test_trainer_scales_lr_base_by_sqrt_for_adamw_and_linearly_for_sgd(tmp_path):
    tr, va = data()
    lrs = {}
    for opt in ("adamw", "sgd"):
        rec = Record()
        cfg = tiny_config(tmp_path, opt, opt=opt, lr=None, lr_base=0.1, lr_base_size=256, batch_size=16,
                          sched="constant", max_steps=1, epochs=1)
        train(cfg, train_dataset=tr, val_dataset=va, callbacks=[rec])
        lrs[opt] = rec.lrs[0][0]
    assert lrs == {"adamw": pytest.approx(0.1 * (16 / 256) ** 0.5), "sgd": pytest.approx(0.1 * 16 / 256)}


# -- optimizers against timm's ------------------------------------------------------------------------------------
def _scale_invariant_net() -> nn.Module:
    # conv -> BN makes the conv weight scale-invariant (AdamP projects its step), the linear layer is not
    return nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, 5)).double()


@pytest.mark.parametrize("opt", ["lamb", "lars", "adamp", "nadam", "radam", "rmsprop", "adagrad"])
def test_optimizer_matches_timm_create_optimizer_v2(opt):
    torch.manual_seed(0)
    ours_model = _scale_invariant_net()
    ref_model = copy.deepcopy(ours_model)
    lr = {"lars": 0.5, "adagrad": 0.05}.get(opt, 0.01)
    ours = create_optimizer(ours_model, opt, lr, weight_decay=0.05, momentum=0.9)
    ref = create_optimizer_v2(ref_model, opt, lr=lr, weight_decay=0.05, momentum=0.9)
    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        x = torch.randn(4, 3, 8, 8, generator=g, dtype=torch.float64)
        y = torch.randint(0, 5, (4,), generator=g)
        for model, o in ((ours_model, ours), (ref_model, ref)):
            loss = nn.functional.cross_entropy(model(x), y) * 30  # large gradients: LAMB's global clip acts
            o.zero_grad()
            loss.backward()
            o.step()
    torch.manual_seed(0)
    start = _scale_invariant_net()  # the same seed-0 initial weights, to show the steps moved them
    for (name, a), b, s in zip(ours_model.named_parameters(), ref_model.parameters(), start.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12, msg=f"{opt}: {name}")
        assert not torch.equal(a, s), f"{opt} did not move {name}"


def test_adamp_projects_only_scale_invariant_weights():
    """AdamP's defining behaviour (Heo et al., Algorithm 2): the step of the conv weight before BN (scale-invariant)
    is orthogonal to it, a bias gets the plain Adam step."""
    torch.manual_seed(0)
    net = _scale_invariant_net()
    opt = AdamP(net.parameters(), lr=0.01)  # nesterov off: the first step is Adam's where nothing is projected
    adam_net = copy.deepcopy(net)
    adam = torch.optim.Adam(adam_net.parameters(), lr=0.01)
    x, y = torch.randn(4, 3, 8, 8, dtype=torch.float64), torch.tensor([0, 1, 2, 3])
    for model, o in ((net, opt), (adam_net, adam)):
        o.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
    w0 = net[0].weight.detach().clone()
    opt.step()
    adam.step()

    def cos(a, b):  # per output channel
        return nn.functional.cosine_similarity(a.flatten(1), b.flatten(1), dim=1).abs().max().item()

    # the projected update of the conv weight is orthogonal to it, channel by channel; Adam's is not
    assert cos(net[0].weight.detach() - w0, w0) < 1e-6  # (eps 1e-8 in the unit vector)
    assert cos(adam_net[0].weight.detach() - w0, w0) > 1e-2
    # 1-D parameters are never projected: the bias takes Adam's step
    torch.testing.assert_close(net[5].bias, adam_net[5].bias, rtol=1e-9, atol=1e-12)


def test_unknown_optimizer_is_a_clear_error():
    from moderncnn.errors import ConfigError

    with pytest.raises(ConfigError, match=r"opt \(--opt\) must be one of .*lamb.*(did you mean lars\?)"):
        TrainConfig(opt="larss")


# -- schedules against timm's -------------------------------------------------------------------------------------
def _timm_lrs(sched: str, n: int, *, per_update: bool, spe: int, metrics=(), **kw) -> tuple[list[float], int]:
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # timm deprecates its plateau schedule
        s, total = create_scheduler_v2(opt, sched, step_on_epochs=not per_update, updates_per_epoch=spe, **kw)
    out = []
    for t in range(n):
        if per_update:
            s.step_update(t)
        elif sched == "plateau":
            if t > 0:
                s.step(t, metrics[t - 1])
        else:
            s.step(t)
        out.append(opt.param_groups[0]["lr"])
    return out, total


@pytest.mark.parametrize("sched", ["cosine", "tanh", "poly"])
def test_per_update_schedules_with_warmup_and_cooldown_match_timm(sched):
    spe, epochs, cooldown = 5, 10, 3
    kw = dict(num_epochs=epochs, warmup_epochs=2, warmup_lr=1e-4, min_lr=1e-5, cooldown_epochs=cooldown,
              decay_rate=0.7)
    ref, total = _timm_lrs(sched, (epochs + cooldown) * spe, per_update=True, spe=spe, **kw)
    assert total == epochs + cooldown  # timm trains the cooldown epochs after the schedule; so do we
    cfg = TrainConfig(sched=sched, epochs=epochs, cooldown_epochs=cooldown)
    assert cfg.epochs + cfg.cooldown_epochs == total
    ours = LRSchedule(0.1, epochs * spe, spe, sched=sched, warmup_epochs=2, warmup_lr=1e-4, min_lr=1e-5,
                      decay_rate=0.7)
    assert [ours.lr_at(t) for t in range(len(ref))] == pytest.approx(ref, rel=1e-12, abs=1e-15)
    assert ours.lr_at(len(ref) - 1) == pytest.approx(1e-5)  # the cooldown runs at min_lr


@pytest.mark.parametrize("sched, kw", [("step", dict(decay_epochs=3, decay_rate=0.5)),
                                       ("multistep", dict(decay_milestones=(3, 5, 8), decay_rate=0.3))])
def test_per_epoch_schedules_match_timm(sched, kw):
    spe, epochs = 4, 10
    ref, _ = _timm_lrs(sched, epochs, per_update=False, spe=spe, num_epochs=epochs, warmup_epochs=2, warmup_lr=1e-3,
                       **kw)
    ours = LRSchedule(0.1, epochs * spe, spe, sched=sched, warmup_epochs=2, warmup_lr=1e-3, **kw)
    # our warmup is per update; at each epoch start it equals timm's per-epoch warmup, and after it the whole epoch
    # has timm's rate
    assert [ours.lr_at(e * spe) for e in range(epochs)] == pytest.approx(ref, rel=1e-12)
    assert [ours.lr_at(e * spe + spe - 1) for e in range(2, epochs)] == pytest.approx(ref[2:], rel=1e-12)


def test_plateau_follows_the_metric_like_timm():
    spe, epochs = 3, 16
    metrics = [10, 20, 30, 30, 30, 30, 31, 31, 31, 31, 31, 40, 40, 40, 40, 40]
    ref, _ = _timm_lrs("plateau", epochs, per_update=False, spe=spe, metrics=metrics, num_epochs=epochs,
                       warmup_epochs=2, warmup_lr=1e-3, patience_epochs=2, decay_rate=0.5, min_lr=0.02)
    ours = LRSchedule(0.1, epochs * spe, spe, sched="plateau", warmup_epochs=2, warmup_lr=1e-3, patience_epochs=2,
                      decay_rate=0.5, min_lr=0.02)
    got = []
    for e in range(epochs):
        got.append(ours.lr_at(e * spe))
        ours.observe(e + 1, metrics[e])
    assert got == pytest.approx(ref, rel=1e-12)
    # 0.1, halved after 3 flat evaluations (patience 2) twice, then floored at min_lr 0.02 by the third
    assert sorted(set(round(v, 12) for v in got[2:])) == [0.02, 0.025, 0.05, 0.1] and got[-1] == pytest.approx(0.02)
    # the counters are state that a checkpoint carries
    again = LRSchedule(0.1, epochs * spe, spe, sched="plateau", patience_epochs=2, decay_rate=0.5)
    again.load_state_dict(ours.state_dict())
    assert again.lr_at(epochs * spe) == pytest.approx(max(0.1 * 0.5**ours.plateau_decays, 0.0))


def test_plateau_in_the_trainer_decays_after_patience(tmp_path):
    tr, va = data()
    rec = Record()
    # a rate too small to change a prediction: top-1 never improves after the first evaluation, so with patience 0
    # each later evaluation halves the rate
    cfg = tiny_config(tmp_path, sched="plateau", patience_epochs=0, decay_rate=0.5, epochs=3, lr=1e-9, batch_size=16,
                      opt="sgd", momentum=0.0, weight_decay=0.0)
    trainer = Trainer(cfg, train_dataset=tr, val_dataset=va, callbacks=[rec])
    trainer.run()
    assert [rec.lrs[i][0] for i in (0, 3, 6)] == pytest.approx([1e-9, 1e-9, 0.5e-9])  # 3 steps per epoch
    assert trainer.schedule.plateau_decays == 2
    state = torch.load(tmp_path / "run" / "last.state.pt", weights_only=True)
    assert state["schedule"]["plateau_decays"] == 2
    # a run stopped after 2 epochs and resumed continues the counters: the third epoch is at half the rate again
    part = cfg.replace(output=str(tmp_path / "resumed"), max_steps=6)
    train(part, train_dataset=tr, val_dataset=va)
    rec2 = Record()
    resumed = Trainer(part.replace(resume=part.output, max_steps=None), train_dataset=tr, val_dataset=va,
                      callbacks=[rec2])
    resumed.run()
    assert rec2.lrs[0][0] == pytest.approx(0.5e-9) and resumed.schedule.plateau_decays == 2


# -- layer-wise lr decay ------------------------------------------------------------------------------------------
FAMILIES = {
    "convnext_atto": {},
    "repvgg_a0": {},
    "mobilenetv2_050": {},
    "tf_efficientnetv2_b0": {},
    "mobilenext_035": {},
    "replknet_31b": dict(layers=(1, 1, 1, 1), channels=(16, 32, 64, 128), large_kernel_sizes=(13, 11, 9, 7)),
}


@pytest.mark.parametrize("name", list(FAMILIES))
def test_layer_decay_groups_equal_timm_create_optimizer_v2(name):
    model = create_model(name, num_classes=10, **FAMILIES[name])
    ours = create_optimizer(model, "adamw", 1.0, weight_decay=0.05, layer_decay=0.8)
    ref = create_optimizer_v2(model, "adamw", lr=1.0, weight_decay=0.05, layer_decay=0.8)

    def per_param(opt):
        return {id(p): (g["lr_scale"], g["weight_decay"]) for g in opt.param_groups for p in g["params"]}

    names = {id(p): n for n, p in model.named_parameters()}
    a, b = per_param(ours), per_param(ref)
    assert a.keys() == b.keys() == set(names)
    diff = {names[k]: (a[k], b[k]) for k in a if a[k][0] != pytest.approx(b[k][0], rel=1e-12) or a[k][1] != b[k][1]}
    assert not diff
    scales = sorted({s for s, _ in a.values()})
    assert len(scales) > 3 and scales[-1] == 1.0  # several layers, the classifier at the full rate
    ids = layer_ids(model)
    head = model.get_classifier().weight
    assert a[id(head)][0] == 1.0 and ids[[n for n, p in model.named_parameters() if p is head][0]] == max(ids.values())


def test_layer_decay_in_the_trainer_scales_each_group(tmp_path):
    tr, va = data()
    rec = Record()
    cfg = tiny_config(tmp_path, layer_decay=0.5, sched="constant", max_steps=1, epochs=1)
    trainer = Trainer(cfg, train_dataset=tr, val_dataset=va, callbacks=[rec])
    trainer.run()
    scales = [g["lr_scale"] for g in trainer.optimizer.param_groups]
    assert rec.lrs[0] == pytest.approx([2e-3 * s for s in scales])
    assert min(scales) < 0.2 and max(scales) == 1.0


# -- loss, sampler, --dist-bn -------------------------------------------------------------------------------------
@pytest.mark.parametrize("smoothing, thresh", [(0.1, None), (0.1, 0.2), (0.0, None)])
def test_bce_matches_timm(smoothing, thresh):
    from timm.loss import BinaryCrossEntropy as TimmBCE

    logits = torch.randn(6, 5, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 3, 4, 0])
    ours = BinaryCrossEntropy(smoothing, thresh)
    torch.testing.assert_close(ours(logits, labels), TimmBCE(smoothing, thresh)(logits, labels))
    # mixed (dense) targets: timm's mixup smooths before mixing, ours after; smoothing is linear, so they agree
    lam, perm = 0.7, torch.tensor([1, 2, 3, 4, 0, 5])

    def smooth(y):
        return nn.functional.one_hot(y, 5).double() * (1 - smoothing) + smoothing / 5

    timm_target = lam * smooth(labels) + (1 - lam) * smooth(labels[perm])
    our_target = lam * nn.functional.one_hot(labels, 5).double() + (1 - lam) * nn.functional.one_hot(labels[perm], 5)
    torch.testing.assert_close(ours(logits, our_target), TimmBCE(0.0, thresh)(logits, timm_target))
    assert not torch.allclose(ours(logits, labels), nn.functional.cross_entropy(logits, labels))


@pytest.mark.parametrize("n, world, repeats", [(600, 2, 3), (50, 2, 3), (300, 3, 2)])
def test_repeated_augmentation_sampler_equals_timm(n, world, repeats):
    from timm.data.distributed_sampler import RepeatAugSampler

    for rank in range(world):
        for epoch in (0, 3):
            ref = RepeatAugSampler(list(range(n)), num_replicas=world, rank=rank, num_repeats=repeats)
            ref.set_epoch(epoch)
            ours = EpochSampler(n, seed=0, rank=rank, world_size=world, repeats=repeats)  # timm seeds by epoch only
            ours.set_epoch(epoch)
            assert list(ours) == list(ref) and len(ours) == len(ref)
    ranks = [EpochSampler(n, seed=0, rank=r, world_size=world, repeats=repeats) for r in range(world)]
    for s in ranks:
        s.set_epoch(1)
    shards = [s.indices() for s in ranks]
    # the copies of a sample go to different processes: the first steps of the ranks hold the same images
    assert all(shards[0][j] == shards[r][j] for r in range(world) for j in range(0, 6, repeats) if repeats >= world)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_dist_bn_reduces_or_broadcasts_bn_statistics_over_two_gloo_processes(tmp_path):
    out = str(tmp_path / "state")
    from dist_bn_worker import run  # a module of its own: each spawned process imports only it, not timm

    mp.spawn(run, args=(2, _free_port(), out), nprocs=2, join=True)
    for mode, mean, var in (("reduce", 1.5, 15.0), ("broadcast", 1.0, 10.0)):  # mean of ranks 0, 1 / rank 0's
        for rank in range(2):
            sd = torch.load(f"{out}.{mode}.{rank}", weights_only=True)
            assert torch.equal(sd["1.running_mean"], torch.full((3,), mean)), (mode, rank)
            assert torch.equal(sd["1.running_var"], torch.full((3,), var)), (mode, rank)
            assert torch.equal(sd["0.weight"], torch.full_like(sd["0.weight"], float(rank)))


def test_dist_bn_is_a_no_op_in_one_process():
    bn = nn.BatchNorm2d(2)
    bn.running_mean.fill_(3.0)
    distribute_bn(bn, DistInfo(), "reduce")
    assert torch.equal(bn.running_mean, torch.full((2,), 3.0))


# -- float16 AMP with a GradScaler --------------------------------------------------------------------------------
class Dtypes(Callback):
    def __init__(self) -> None:
        self.seen: set = set()
        self.scales: list[float] = []

    def on_loss(self, trainer, loss):
        if not self.seen:
            trainer.model.head.fc.register_forward_hook(lambda m, i, o: self.seen.add(o.dtype))
        return None

    def on_step_end(self, trainer) -> None:
        if trainer.scaler is not None:
            self.scales.append(trainer.scaler.get_scale())


def test_float16_amp_uses_a_grad_scaler_and_resumes_exactly(tmp_path):
    tr, va = data()
    opts = dict(amp=True, amp_dtype="float16", clip_grad=1.0, epochs=2, batch_size=8, max_steps=None)
    probe = Dtypes()
    straight = train(tiny_config(tmp_path, "straight", **opts), train_dataset=tr, val_dataset=va, callbacks=[probe])
    assert straight.global_step == 12
    assert torch.float16 in probe.seen  # autocast ran in float16
    assert probe.scales and all(s > 1.0 for s in probe.scales)  # the loss was scaled
    state = torch.load(tmp_path / "straight" / "last.state.pt", weights_only=True)
    assert state["grad_scaler"]["scale"] == pytest.approx(probe.scales[-1])

    cfg = tiny_config(tmp_path, "stopped", **opts)
    train(cfg.replace(max_steps=4), train_dataset=tr, val_dataset=va)
    train(cfg.replace(resume=cfg.output), train_dataset=tr, val_dataset=va)
    a, b = load_file(str(tmp_path / "straight" / "last.safetensors")), load_file(str(tmp_path / "stopped" /
                                                                                      "last.safetensors"))
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_bfloat16_stays_the_amp_default_without_a_scaler(tmp_path):
    tr, va = data()
    probe = Dtypes()
    trainer = Trainer(tiny_config(tmp_path, amp=True, max_steps=1, epochs=1), train_dataset=tr, val_dataset=va,
                      callbacks=[probe])
    trainer.run()
    assert trainer.scaler is None and probe.seen == {torch.bfloat16}


# -- the flags through the trainer: head init scale, BCE, repeats, tanh + cooldown, TensorBoard ----------------------
def test_head_init_scale_multiplies_the_loaded_classifier(tmp_path):
    tr, va = data()
    cfg = tiny_config(tmp_path, max_steps=1, epochs=1)
    model = create_model(cfg.model, num_classes=4, in_chans=1, **{k: tuple(v) for k, v in cfg.model_kwargs.items()})
    save_file(model.state_dict(), str(tmp_path / "init.safetensors"))
    trainer = Trainer(cfg.replace(initial_checkpoint=str(tmp_path / "init.safetensors"), head_init_scale=0.001),
                      train_dataset=tr, val_dataset=va)
    trainer.setup()
    trainer.lock.release()
    torch.testing.assert_close(trainer.model.head.fc.weight, model.head.fc.weight * 0.001)
    torch.testing.assert_close(trainer.model.stem[0].weight, model.stem[0].weight)


def test_many_timm_flags_together_through_the_cli(tmp_path):
    pytest.importorskip("tensorboard")
    import argparse

    from moderncnn.training.cli import add_train_flags, config_from_args

    p = argparse.ArgumentParser()
    add_train_flags(p)
    args = p.parse_args(["--opt", "lamb", "--sched", "tanh", "--cooldown-epochs", "1", "--epochs", "2",
                         "--bce-loss", "--bce-target-thresh", "0.2", "--smoothing", "0.1", "--aug-repeats", "2",
                         "--layer-decay", "0.7", "--lr-base-scale", "linear", "--log-tensorboard", "--dist-bn",
                         "reduce", "--amp-dtype", "float16"])
    cfg = config_from_args(args)
    assert (cfg.opt, cfg.sched, cfg.cooldown_epochs, cfg.bce_loss, cfg.bce_target_thresh, cfg.aug_repeats,
            cfg.layer_decay, cfg.lr_base_scale, cfg.log_tensorboard, cfg.dist_bn, cfg.amp_dtype) == (
        "lamb", "tanh", 1, True, 0.2, 2, 0.7, "linear", True, "reduce", "float16")
    tr, va = data()
    base = tiny_config(tmp_path)
    run_cfg = cfg.replace(**{k: v for k, v in base.to_dict().items() if k in (
        "model", "model_kwargs", "img_size", "train_crop", "crop_pct", "mean", "std", "batch_size", "lr", "workers",
        "no_progress", "log_interval", "output", "fuse", "plots")}, amp=False)
    trainer = Trainer(run_cfg, train_dataset=tr, val_dataset=va)
    result = trainer.run()
    assert trainer.total_epochs == 3 and result.epochs_completed == 3  # 2 epochs + 1 of cooldown
    assert isinstance(trainer.criterion, BinaryCrossEntropy)
    assert type(trainer.optimizer).__name__ == "Lamb"
    assert len(trainer.sampler) == 48  # repeated augmentation keeps the epoch length
    idx = trainer.sampler.indices()
    assert idx[0] == idx[1] and len(set(idx)) == 24  # each image twice per epoch
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "run" / "tb"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("eval_top1")] == [0, 1, 2]
    assert [e.value for e in acc.Scalars("train_loss")] == pytest.approx(
        [float(r) for r in _csv_column(tmp_path / "run" / "metrics.csv", "train_loss")])


def _csv_column(path, name):
    return [r[name] for r in csv.DictReader(open(path))]


def test_log_wandb_without_wandb_is_a_one_line_error(tmp_path, capsys):
    import importlib.util

    from moderncnn.cli import main

    if importlib.util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed here")
    assert main(["train", "--log-wandb", "--output", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "--log-wandb needs the wandb package" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "r").exists()


# -- the evaluation progress bar ----------------------------------------------------------------------------------
def test_evaluation_shows_a_progress_bar_unless_told_not_to(capsys):
    from moderncnn.training.evaluate import evaluate

    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    batches = [(torch.randn(2, 4), torch.tensor([0, 1])) for _ in range(3)]
    evaluate(model, batches, progress=True)
    assert "eval" in capsys.readouterr().err
    evaluate(model, batches, progress=False)
    assert capsys.readouterr().err == ""


# -- the ConvNeXt 22k -> 1k fine-tuning recipe --------------------------------------------------------------------
def test_convnext_fine_tuning_recipe_has_the_paper_numbers():
    from moderncnn.training.config import from_dict, load_recipe, resolve_drop_path

    c = from_dict(load_recipe("convnext_in22k_ft_in1k"))  # ConvNeXt Table 6, ImageNet-22K column; TRAINING.md
    assert (c.opt, c.opt_betas, c.weight_decay, c.epochs, c.sched, c.warmup_epochs) == (
        "adamw", (0.9, 0.999), 1e-8, 30, "cosine", 0)
    assert resolve_lr(c.lr_base, 512, c.lr_base_size, c.opt, c.lr_base_scale) == pytest.approx(5e-5)
    assert (c.layer_decay, c.head_init_scale, c.mixup, c.cutmix, c.reprob, c.smoothing) == (0.8, 1e-3, 0, 0, 0.25,
                                                                                             0.1)
    assert [resolve_drop_path(c.drop_path, f"convnext_{s}") for s in ("tiny", "small", "base", "large", "xlarge")] == [
        0.0, 0.1, 0.2, 0.3, 0.4]
    assert (c.model_ema, c.model_ema_decay, c.clip_grad) == (False, 0.9999, None)
    # the from-scratch recipes keep the linear scaling they were written with
    for name, batch, lr in (("convnext", 4096, 4e-3), ("replknet", 2048, 4e-3)):
        r = from_dict(load_recipe(name))
        assert resolve_lr(r.lr_base, batch // 2, r.lr_base_size, r.opt, r.lr_base_scale) == pytest.approx(lr / 2)


def test_fine_tuning_recipe_runs_from_a_checkpoint_through_the_cli(tmp_path):
    """The recipe's options together (layer decay, head init scale, per-size drop path overridden, lr-base at 512)
    on a tiny ConvNeXt and Fashion-MNIST, starting from a weights file."""
    from moderncnn.cli import main

    kw = dict(depths=(1, 1), dims=(8, 16))
    start = create_model("convnext_atto", num_classes=10, in_chans=1, **kw)
    save_file(start.state_dict(), str(tmp_path / "start.safetensors"))
    run = tmp_path / "ft"
    rc = main(["train", "--recipe", "convnext_in22k_ft_in1k", "--model", "convnext_atto", "--model-kwargs",
               "depths=[1,1]", "dims=[8,16]", "--drop-path", "0.1", "--dataset", "fashion-mnist", "--img-size", "16",
               "--eval-img-size", "16", "-b", "4", "--max-steps", "2", "--train-samples", "16", "--val-samples", "8",
               "-j", "0", "--no-progress", "--no-plots", "--no-fuse", "--initial-checkpoint",
               str(tmp_path / "start.safetensors"), "--output", str(run)])
    assert rc == 0
    state = torch.load(run / "last.state.pt", weights_only=True)
    groups = state["optimizer"]["param_groups"]
    scales = sorted({g["lr_scale"] for g in groups})
    assert scales[-1] == 1.0 and scales[0] == pytest.approx(0.8 ** (len(scales) - 1))
    # 5e-5 per 512 images, scaled linearly to 4 (and barely decayed by the cosine after one step)
    assert all(g["lr"] == pytest.approx(5e-5 * 4 / 512 * g["lr_scale"], rel=1e-3) for g in groups)
    after = load_file(str(run / "last.safetensors"))
    # the head starts at 0.001 x the loaded one; two AdamW steps of ~4e-7 barely move it
    torch.testing.assert_close(after["head.fc.weight"], start.head.fc.weight.detach() * 1e-3, atol=2e-6, rtol=0)


def test_log_wandb_sends_each_epoch_row(tmp_path, monkeypatch):
    """With a stand-in ``wandb`` module (the real one is not installed here): one ``init`` with the run's config,
    one ``log`` per epoch with that epoch's numbers, ``finish`` at the end."""
    import importlib.machinery
    import types

    calls = []

    class Run:
        def log(self, row, step):
            calls.append(("log", step, row))

        def finish(self):
            calls.append(("finish",))

    fake = types.ModuleType("wandb")
    fake.__spec__ = importlib.machinery.ModuleSpec("wandb", None)
    fake.init = lambda **kw: calls.append(("init", kw)) or Run()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    tr, va = data()
    train(tiny_config(tmp_path, log_wandb=True, epochs=2, batch_size=16), train_dataset=tr, val_dataset=va)
    assert [c[0] for c in calls] == ["init", "log", "log", "finish"]
    assert calls[0][1]["config"]["log_wandb"] is True and calls[0][1]["name"] == "run"
    rows = list(csv.DictReader(open(tmp_path / "run" / "metrics.csv")))
    for (_, step, logged), row in zip(calls[1:3], rows):
        assert step == int(row["epoch"]) and logged["eval_top1"] == pytest.approx(float(row["eval_top1"]))
