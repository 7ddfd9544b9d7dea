"""Checkpoints: committed whole (a kill at any write point leaves a complete one), safe loading, RNG round
trip, torn, damaged, non-finite and foreign checkpoints, and run folders of the older layout."""

from __future__ import annotations

import os
import random
import signal

import numpy as np
import pytest
import torch

from moderncnn.errors import CheckpointError
from moderncnn.interop import io as atomic_io
from moderncnn.training import checkpoint as ck


def test_atomic_write_failure_leaves_the_old_file_and_no_temp(tmp_path):
    target = tmp_path / "last.state.pt"
    atomic_io.atomic_write_text(target, "old")

    def half_then_crash(tmp):
        tmp.write_text("partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_io.atomic_write(target, half_then_crash)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["last.state.pt"]
    # a first write that fails leaves nothing at all
    with pytest.raises(OSError):
        atomic_io.atomic_write(tmp_path / "new.safetensors", half_then_crash)
    assert not (tmp_path / "new.safetensors").exists()


def test_rng_state_round_trip_through_a_weights_only_file(tmp_path):
    torch.manual_seed(3)
    np.random.seed(3)
    random.seed(3)
    torch.rand(5), np.random.rand(5), random.random(), np.random.randn()  # leave a cached Gaussian
    state = ck.rng_state()
    expected = (torch.rand(4), np.random.rand(4), [random.random() for _ in range(4)], np.random.randn(2))
    path = tmp_path / "rng.pt"
    torch.save(state, path)
    ck.set_rng_state(torch.load(path, weights_only=True))
    got = (torch.rand(4), np.random.rand(4), [random.random() for _ in range(4)], np.random.randn(2))
    assert torch.equal(expected[0], got[0])
    assert np.array_equal(expected[1], got[1]) and expected[2] == got[2] and np.array_equal(expected[3], got[3])


MODEL = torch.nn.Linear(3, 2)
BASE = {k: v.detach().clone() for k, v in MODEL.state_dict().items()}


def _weights(scale: float) -> dict[str, torch.Tensor]:
    return {k: v * scale for k, v in BASE.items()}


def _save(run_dir, step: int, tags=("last",), scale: float = 1.0, ema: bool = True, **kw):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 3)).sum().backward()
    opt.step()
    state = dict(epoch=1, step_in_epoch=0, global_step=step, optimizer=opt.state_dict(), rng=ck.rng_state(),
                 has_ema=ema, config={"model": "m", "scale": [0.08, 1.0]})
    return ck.save_checkpoint(run_dir, tags, model_state=kw.pop("model_state", _weights(scale)),
                              ema_state=kw.pop("ema_state", _weights(2 * scale) if ema else None),
                              train_state=state, model_name="m", model_config={"width": 3}, **kw)


def _assert_weights(got: ck.Checkpoint, scale: float) -> None:
    for k, v in _weights(scale).items():
        assert torch.equal(got.model[k], v), k
        assert got.ema is not None and torch.equal(got.ema[k], 2 * v), k


def test_save_and_load_round_trip(tmp_path):
    folder = _save(tmp_path, 7, scale=3.0)
    assert folder == tmp_path / "checkpoints" / "step-00000007"
    assert sorted(p.name for p in folder.iterdir()) == ["ema.safetensors", "manifest.json", "model.safetensors",
                                                        "state.pt"]
    got = ck.load_checkpoint(tmp_path)  # a run folder resolves to its newest complete checkpoint
    _assert_weights(got, 3.0)
    assert got.state["global_step"] == 7 and got.state["model_config"] == {"width": 3}
    assert got.meta["model"] == "m" and got.path == folder and got.notes == []
    # the run-folder links read the same checkpoint, and so does any file of the folder
    for path in (tmp_path / "last.state.pt", tmp_path / "last_ema.safetensors", folder / "state.pt", folder):
        assert ck.load_checkpoint(path).state["token"] == got.state["token"], path
    ck.check_same_model(got, "m", MODEL.state_dict())


def test_newer_checkpoints_replace_older_ones_and_the_best_is_kept(tmp_path):
    _save(tmp_path, 1, ("last", "best"), scale=1.0)
    _save(tmp_path, 2, "last", scale=2.0, ema=False)
    _save(tmp_path, 3, "last", scale=3.0)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-00000001", "step-00000003"]
    _assert_weights(ck.load_checkpoint(tmp_path), 3.0)
    _assert_weights(ck.load_checkpoint(tmp_path / "best.state.pt"), 1.0)
    # a checkpoint without EMA leaves no stale EMA link behind
    _save(tmp_path, 4, ("last", "best"), scale=4.0, ema=False)
    assert not (tmp_path / "last_ema.safetensors").exists() and not (tmp_path / "best_ema.safetensors").exists()
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-00000004"]
    # the same step saved again (a run resumed from an older checkpoint) gets its own folder and wins
    _save(tmp_path, 4, "last", scale=5.0)
    _assert_weights(ck.load_checkpoint(tmp_path), 5.0)


def _damage(kind):
    def damage(folder):
        if kind == "truncated weights":
            path = folder / "model.safetensors"
            path.write_bytes(path.read_bytes()[:-8])
        elif kind == "missing state":
            (folder / "state.pt").unlink()
        elif kind == "manifest":
            (folder / "manifest.json").write_text("{")
        elif kind == "weights of another save":
            other = _save(folder.parent.parent / "other", 9)
            (folder / "ema.safetensors").write_bytes((other / "ema.safetensors").read_bytes())
    return damage


@pytest.mark.parametrize("kind", ["truncated weights", "missing state", "manifest", "weights of another save"])
def test_a_damaged_newest_checkpoint_is_skipped_for_the_previous_complete_one(tmp_path, kind):
    _save(tmp_path, 1, ("last", "best"), scale=1.0)
    newest = _save(tmp_path, 2, "last", scale=2.0)
    _damage(kind)(newest)
    got = ck.load_checkpoint(tmp_path)
    _assert_weights(got, 1.0)
    if kind != "manifest":  # an unreadable manifest is not a committed checkpoint at all
        assert len(got.notes) == 1 and "step-00000002" in got.notes[0]
    with pytest.raises(CheckpointError, match="step-00000002"):
        ck.load_checkpoint(newest)


@pytest.mark.parametrize("which", ["model", "ema"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_weights_that_are_not_finite_are_never_a_checkpoint(tmp_path, which, bad):
    _save(tmp_path, 1, scale=1.0)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    weights = _weights(1.0)
    weights["weight"] = weights["weight"].clone()
    weights["weight"][0, 0] = bad
    with pytest.raises(CheckpointError, match=r"global step 2: 1 weights are not finite \((ema\.)?weight\)"):
        _save(tmp_path, 2, **{f"{which}_state": weights})
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing written
    _assert_weights(ck.load_checkpoint(tmp_path), 1.0)


def _kill_at(point):
    def hook(p):
        if p == point:
            os.kill(os.getpid(), signal.SIGKILL)
    return hook


@pytest.mark.parametrize("point", ck.WRITE_POINTS)
def test_a_kill_at_any_write_point_leaves_a_complete_checkpoint(tmp_path, point):
    """SIGKILL the writer (a forked process) at each of its steps: the run folder then holds the previous
    checkpoint or the new one, complete; the next start cleans up; saving goes on."""
    _save(tmp_path, 1, ("last", "best"), scale=1.0)
    _save(tmp_path, 2, "last", scale=2.0)
    pid = os.fork()
    if pid == 0:  # the child writes step 3 and dies at `point`
        try:
            ck.FAULT_HOOK = _kill_at(point)
            _save(tmp_path, 3, ("last", "best"), scale=3.0)
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, f"the writer never reached {point}"
    committed = ck.WRITE_POINTS.index(point) >= ck.WRITE_POINTS.index("commit")
    step, best = (3, 3) if committed else (2, 1)
    got = ck.load_checkpoint(tmp_path)
    assert got.state["global_step"] == step and got.notes == []
    _assert_weights(got, float(step))

    removed = ck.clean_run_dir(tmp_path)  # what the next training start does
    assert bool(removed) == (point not in ("commit", "prune") and not point.startswith("link:"))
    left = [p.name for p in (*tmp_path.iterdir(), *(tmp_path / "checkpoints").iterdir())]
    assert not [n for n in left if n.startswith(".")], left
    assert ck.load_checkpoint(tmp_path / "last.state.pt").state["global_step"] == step
    _assert_weights(ck.load_checkpoint(tmp_path / "best_ema.safetensors"), float(best))

    _save(tmp_path, 4, "last", scale=4.0)
    _assert_weights(ck.load_checkpoint(tmp_path), 4.0)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [f"step-{best:08d}", "step-00000004"]


def _save_old_layout(run_dir, tag: str, scale: float, token: str | None = None) -> None:
    """What moderncnn 0.1.0 wrote: TAG.safetensors, TAG_ema.safetensors and TAG.state.pt with one token."""
    import uuid

    token = token or uuid.uuid4().hex
    meta = {"format": "moderncnn-weights", "model": "m", "model_config": '{"width": 3}', "token": token}
    weights, ema, state = ck.checkpoint_paths(run_dir, tag)
    ck.save_weights(weights, _weights(scale), dict(meta, kind="model"))
    ck.save_weights(ema, _weights(2 * scale), dict(meta, kind="ema"))
    torch.save({"format": ck.STATE_FORMAT, "version": 1, "token": token, "model": "m", "global_step": int(scale),
                "has_ema": True, "model_config": {"width": 3}}, state)


def test_run_folders_of_the_older_layout_still_load(tmp_path):
    _save_old_layout(tmp_path, "best", 1.0)
    _save_old_layout(tmp_path, "last", 2.0)
    _assert_weights(ck.load_checkpoint(tmp_path), 2.0)
    _assert_weights(ck.load_checkpoint(tmp_path / "best.state.pt"), 1.0)
    # `last` torn by the old writer (killed between its renames): the run falls back to `best`, saying why
    _save_old_layout(tmp_path / "other", "last", 3.0)
    (tmp_path / "last_ema.safetensors").write_bytes((tmp_path / "other" / "last_ema.safetensors").read_bytes())
    got = ck.load_checkpoint(tmp_path)
    _assert_weights(got, 1.0)
    assert "come from different saves" in got.notes[0]
    with pytest.raises(CheckpointError, match="come from different saves"):
        ck.load_checkpoint(tmp_path / "last.state.pt")
    # a resumed old run writes the new layout; its links replace the old files
    _save(tmp_path, 5, "last", scale=5.0)
    _assert_weights(ck.load_checkpoint(tmp_path), 5.0)
    _assert_weights(ck.load_checkpoint(tmp_path / "last.state.pt"), 5.0)


def test_foreign_unsafe_and_missing_checkpoints_are_refused(tmp_path):
    _save(tmp_path, 1)
    got = ck.load_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match=r"trained with model 'm', this run builds 'other'"):
        ck.check_same_model(got, "other", MODEL.state_dict())
    with pytest.raises(CheckpointError, match=r"1 differently shaped weights \(weight\)"):
        ck.check_same_model(got, "m", torch.nn.Linear(4, 2).state_dict())
    # pickled objects are never executed: weights_only refuses them with a message naming the file
    evil = tmp_path / "evil.state.pt"
    torch.save({"format": ck.STATE_FORMAT, "x": torch.nn.Linear(1, 1)}, evil)
    with pytest.raises(CheckpointError, match="cannot read training state .*evil.state.pt"):
        ck.load_checkpoint(evil)
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(CheckpointError, match="holds no checkpoint"):
        ck.load_checkpoint(tmp_path / "empty_dir")
    with pytest.raises(CheckpointError, match="does not exist"):
        ck.load_checkpoint(tmp_path / "nowhere")
    (tmp_path / "garbage.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="garbage.safetensors"):
        ck.load_weights_file(tmp_path / "garbage.safetensors")
