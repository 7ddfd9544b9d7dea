"""``moderncnn bench --runtime``: the deploy form in PyTorch eager, torch.compile and onnxruntime."""

from __future__ import annotations

import json

import pytest

from moderncnn.cli import main

pytest.importorskip("onnxruntime")


def _rows(base):
    return json.loads(base.with_suffix(".json").read_text())["results"]


def test_cli_bench_onnxruntime_beside_eager(tmp_path, capsys):
    out = tmp_path / "rt"
    assert main(["bench", "repvgg_a0", "--img-size", "32", "-b", "2", "--runtime", "onnxruntime",
                 "--warmup", "1", "--iters", "1", "--rounds", "2", "--out", str(out)]) == 0
    rows = _rows(out)
    assert [r["runtime"] for r in rows] == ["eager", "onnxruntime"]  # eager is always the reference
    assert all(r["ms_per_batch"] > 0 and r["batch"] == 2 and r["img_size"] == 32 for r in rows)
    assert rows[0]["vs_eager"] == 1.0
    ort = rows[1]
    assert ort["vs_eager"] == pytest.approx(rows[0]["ms_per_batch"] / ort["ms_per_batch"])
    assert "onnxruntime" in capsys.readouterr().out


@pytest.mark.slow
def test_cli_bench_all_three_runtimes(tmp_path):
    out = tmp_path / "rt"
    assert main(["bench", "mobilenext_035", "--img-size", "32", "-b", "1", "--runtime", "compile", "onnxruntime",
                 "eager", "--warmup", "1", "--iters", "1", "--rounds", "1", "--out", str(out)]) == 0
    assert [r["runtime"] for r in _rows(out)] == ["eager", "compile", "onnxruntime"]


def test_cli_bench_runtime_refuses_other_modes(capsys):
    assert main(["bench", "repvgg_a0", "--runtime", "onnxruntime", "--vs-timm"]) == 2
    assert "--vs-timm" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["bench", "repvgg_a0", "--runtime", "tensorrt"])
