"""Checkpoint files: atomic writes, safe loading, RNG round trip, torn and foreign checkpoints."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from moderncnn.errors import CheckpointError
from moderncnn.training import checkpoint as ck


def test_atomic_write_failure_leaves_the_old_file_and_no_temp(tmp_path):
    target = tmp_path / "last.state.pt"
    ck.atomic_write_text(target, "old")

    def half_then_crash(tmp):
        tmp.write_text("partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        ck.atomic_write(target, half_then_crash)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["last.state.pt"]
    # a first write that fails leaves nothing at all
    with pytest.raises(OSError):
        ck.atomic_write(tmp_path / "new.safetensors", half_then_crash)
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


def _save(run_dir, model, **kw):
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 3)).sum().backward()
    opt.step()
    state = dict(epoch=1, step_in_epoch=0, global_step=7, optimizer=opt.state_dict(), rng=ck.rng_state(),
                 has_ema=True, config={"model": "m", "scale": [0.08, 1.0]})
    return ck.save_checkpoint(run_dir, "last", model_state=model.state_dict(),
                              ema_state={k: v * 2 for k, v in model.state_dict().items()}, train_state=state,
                              model_name="m", model_config={"width": 3}, **kw)


def test_save_and_load_round_trip(tmp_path):
    model = torch.nn.Linear(3, 2)
    path = _save(tmp_path, model)
    assert path == tmp_path / "last.state.pt"
    got = ck.load_checkpoint(tmp_path)  # a run folder resolves to its `last`
    for k, v in model.state_dict().items():
        assert torch.equal(got.model[k], v) and torch.equal(got.ema[k], v * 2)
    assert got.state["global_step"] == 7 and got.state["model_config"] == {"width": 3}
    assert got.meta["model"] == "m"
    assert ck.load_checkpoint(tmp_path / "last_ema.safetensors").path == path
    ck.check_same_model(got, "m", model.state_dict())


def test_foreign_torn_and_unsafe_checkpoints_are_refused(tmp_path):
    model = torch.nn.Linear(3, 2)
    _save(tmp_path, model)
    got = ck.load_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match=r"trained with model 'm', this run builds 'other'"):
        ck.check_same_model(got, "other", model.state_dict())
    with pytest.raises(CheckpointError, match=r"1 differently shaped weights \(weight\)"):
        ck.check_same_model(got, "m", torch.nn.Linear(4, 2).state_dict())
    # the weights of a later save next to the state of an earlier one: a torn checkpoint
    first_weights = (tmp_path / "last.safetensors").read_bytes()
    _save(tmp_path, model)
    (tmp_path / "last.safetensors").write_bytes(first_weights)
    with pytest.raises(CheckpointError, match="come from different saves"):
        ck.load_checkpoint(tmp_path)
    # pickled objects are never executed: weights_only refuses them with a message naming the file
    evil = tmp_path / "evil.state.pt"
    torch.save({"format": ck.STATE_FORMAT, "x": torch.nn.Linear(1, 1)}, evil)
    with pytest.raises(CheckpointError, match="cannot read training state .*evil.state.pt"):
        ck.load_checkpoint(evil)
    with pytest.raises(CheckpointError, match="holds no checkpoint"):
        ck.load_checkpoint(tmp_path / "empty_dir" if (tmp_path / "empty_dir").mkdir() is None else None)
    (tmp_path / "garbage.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="garbage.safetensors"):
        ck.load_weights_file(tmp_path / "garbage.safetensors")
