"""A run folder is owned by its run: a refused resume changes nothing, a resumed copy writes the copy, an
existing run is not overwritten by accident, a second training on the same folder is refused, and SIGTERM
saves like Ctrl-C (README, "Preemption-safe training")."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from moderncnn.errors import ModernCNNError
from moderncnn.training import checkpoint as ck
from moderncnn.training.run_dir import RunLock
from moderncnn.training.trainer import Callback, train
from test_trainer import data, tiny_config

REPO = Path(__file__).resolve().parents[1]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    """A 2-step run (adamw, EMA) to copy: each case gets a pristine copy."""
    root = tmp_path_factory.mktemp("base")
    tr, va = data()
    train(tiny_config(root, "run", max_steps=2, model_ema=True), train_dataset=tr, val_dataset=va)
    return root / "run"


def _copy(base_run, tmp_path, name="run"):
    shutil.copytree(base_run, tmp_path / name)
    return tmp_path / name


# (what changes, the resume's options, what the refusal must say)
REFUSED = [
    ("optimizer", {"opt": "sgd"}, r"cannot resume .* --opt 'sgd' \(the run has 'adamw'\)"),
    ("learning rate", {"lr": 0.5}, r"--lr 0.5 \(the run has 0.002\).*A resume may change only --epochs"),
    ("classes", {"num_classes": 7}, r"does not belong to this model.*differently shaped"),
    ("model options", {"model_kwargs": {"depths": [1, 1], "dims": [8, 24]}}, r"does not belong to this model"),
    ("output elsewhere", {"output": "{tmp}/elsewhere"}, r"a resume writes into the run it resumes"),
    ("not a run", {"resume": "{tmp}/data", "output": "{tmp}/data"}, r"holds no checkpoint .*is it a moderncnn run"),
    ("locked", {"lock": True}, rf"is in use by another training: pid {os.getpid()}"),
]


@pytest.mark.parametrize("what,options,message", REFUSED, ids=[c[0] for c in REFUSED])
def test_a_refused_resume_leaves_the_run_byte_identical(base_run, tmp_path, what, options, message):
    run = _copy(base_run, tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "images.txt").write_text("not a run")
    before, data_before = _snapshot(run), _snapshot(tmp_path / "data")
    options = {k: v.replace("{tmp}", str(tmp_path)) if isinstance(v, str) else v for k, v in options.items()}
    lock = None
    if options.pop("lock", False):  # another training holds the folder
        lock = RunLock(run)
        lock.acquire()
    cfg = tiny_config(tmp_path, model_ema=True, **{"resume": str(run), **options})
    tr, va = data()
    try:
        with pytest.raises(ModernCNNError, match=message):
            train(cfg, train_dataset=tr, val_dataset=va)
    finally:
        if lock is not None:
            lock.release()
    assert _snapshot(run) == before
    assert _snapshot(tmp_path / "data") == data_before and not (tmp_path / "elsewhere").exists()
    # the run still resumes as it was
    assert train(tiny_config(tmp_path, model_ema=True, resume=str(run), max_steps=3),
                 train_dataset=tr, val_dataset=va).global_step == 3


def test_a_copied_run_resumes_into_the_copy_and_a_run_is_never_overwritten_by_accident(base_run, tmp_path):
    from moderncnn.cli import main

    a = _copy(base_run, tmp_path, "a")
    b = tmp_path / "b"
    shutil.copytree(a, b)  # cp -r runs/a runs/b: b's config.yaml still says output: .../a
    a_before = _snapshot(a)
    from moderncnn.cli import build_parser
    from moderncnn.training.cli import config_from_args

    cfg = config_from_args(build_parser("train").parse_args(["train", "--resume", str(b), "--max-steps", "3"]))
    tr, va = data()
    assert train(cfg, train_dataset=tr, val_dataset=va).run_dir == b
    assert _snapshot(a) == a_before and ck.load_checkpoint(b).state["global_step"] == 3
    # a fresh run into a folder that holds one is refused, unless --overwrite
    with pytest.raises(ModernCNNError, match=r"already holds a run; continue it with --resume .*--overwrite"):
        train(tiny_config(tmp_path, "a", model_ema=True), train_dataset=tr, val_dataset=va)
    assert _snapshot(a) == a_before
    assert main(["train", "--output", str(a), "--model", "convnext_atto"]) == 2
    result = train(tiny_config(tmp_path, "a", max_steps=1, overwrite=True), train_dataset=tr, val_dataset=va)
    assert result.global_step == 1 and ck.load_checkpoint(a).state["global_step"] == 1
    assert not (a / "last_ema.safetensors").exists()  # the old run's files are gone
    assert not (a / "train.lock").exists()


def _write_images(root: Path) -> None:
    from PIL import Image

    for split, n in (("train", 16), ("val", 4)):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.new("L", (16, 16), 40 + 150 * (c == "b") + i).save(root / split / c / f"{i}.png")


def test_sigterm_saves_like_ctrl_c_and_a_second_training_on_the_folder_is_refused(tmp_path):
    """Real processes: a long training gets SIGTERM (what SLURM, Kubernetes and spot machines send) while a
    second training on the same --output is refused naming the first; the first saves, prints the resume
    command and exits 143; the resume continues."""
    _write_images(tmp_path / "images")
    run = tmp_path / "run"
    argv = [sys.executable, "-m", "moderncnn", "train", "--model", "convnext_atto", "--model-kwargs",
            "depths=[1,1]", "dims=[8,16]", "--dataset", "imagefolder", "--data-dir", str(tmp_path / "images"),
            "--img-size", "16", "--train-crop", "pad", "--mean", "0.5", "--std", "0.5", "-b", "4", "-j", "1",
            "--no-progress", "--no-plots", "--no-fuse", "--checkpoint-interval", "1", "--threads", "1"]
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), OMP_NUM_THREADS="1")
    first = subprocess.Popen([*argv, "--epochs", "1000", "--output", str(run)], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not list((run / "checkpoints").glob("step-*")) and first.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        assert first.poll() is None, first.communicate()
        second = subprocess.run([*argv, "--epochs", "1", "--output", str(run)], env=env, capture_output=True,
                                text=True, timeout=120)
        assert second.returncode == 2 and len(second.stderr.splitlines()) == 1, second.stderr
        assert f"is in use by another training: pid {first.pid}" in second.stderr
        first.send_signal(signal.SIGTERM)
        out, err = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 143, err
    assert "SIGTERM: finishing this step" in err and f"resume with: moderncnn train --resume {run}" in out
    step = ck.load_checkpoint(run).state["global_step"]
    assert step >= 1 and not (run / "train.lock").exists()
    resumed = subprocess.run([*argv, "--resume", str(run), "--max-steps", str(step + 2)], env=env,
                             capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert ck.load_checkpoint(run).state["global_step"] == step + 2
    assert torch.load(run / "last.state.pt", weights_only=True)["global_step"] == step + 2


class _PoisonAt(Callback):
    """Make one weight infinite after optimizer step ``step`` (the loss of that step was still finite)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, trainer) -> None:
        if trainer.global_step == self.step:
            with torch.no_grad():
                next(trainer.model.parameters()).view(-1)[0] = float("inf")


def test_weights_that_are_not_finite_are_never_the_last_good_checkpoint(tmp_path):
    from moderncnn.training.trainer import TrainingDivergedError

    tr, va = data()
    with pytest.raises(TrainingDivergedError, match=r"after optimizer step 3 1 weights are not finite .*the last "
                                                    r"good checkpoint is .*last.state.pt \(global step 2\)"):
        train(tiny_config(tmp_path, checkpoint_interval=1), train_dataset=tr, val_dataset=va, callbacks=[_PoisonAt(3)])
    good = ck.load_checkpoint(tmp_path / "run")
    assert good.state["global_step"] == 2 and not ck.non_finite(good.model)


def test_an_unreadable_image_in_a_loader_worker_is_one_line_and_skip_bad_images_lists_it(tmp_path):
    """Real processes with loader workers (which ignore a group SIGTERM): a worker's decode error ends the run
    at once with one line naming the file; --skip-bad-images trains and lists the file in the run folder."""
    _write_images(tmp_path / "images")
    bad = tmp_path / "images" / "train" / "a" / "3.png"
    bad.write_bytes(b"not a png")
    argv = [sys.executable, "-m", "moderncnn", "train", "--model", "convnext_atto", "--model-kwargs",
            "depths=[1,1]", "dims=[8,16]", "--dataset", "imagefolder", "--data-dir", str(tmp_path / "images"),
            "--img-size", "16", "--train-crop", "pad", "--mean", "0.5", "--std", "0.5", "-b", "4", "-j", "2",
            "--epochs", "1", "--no-progress", "--no-plots", "--no-fuse", "--threads", "1"]
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), OMP_NUM_THREADS="1")
    stopped = subprocess.run([*argv, "--output", str(tmp_path / "r1")], env=env, capture_output=True, text=True,
                             timeout=120)
    assert stopped.returncode == 2 and stopped.stderr.splitlines() == [
        f"moderncnn train: error: cannot decode image {bad} (UnidentifiedImageError: cannot identify image file "
        f"'{bad}'); delete or replace the file, or pass --skip-bad-images to skip unreadable files"]
    skipped = subprocess.run([*argv, "--output", str(tmp_path / "r2"), "--skip-bad-images"], env=env,
                             capture_output=True, text=True, timeout=120)
    assert skipped.returncode == 0, skipped.stderr
    assert "skipped 1 unreadable image(s) so far" in skipped.stdout
    assert (tmp_path / "r2" / "bad_images.txt").read_text() == f"{bad}\n"
