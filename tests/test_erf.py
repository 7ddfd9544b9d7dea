"""Effective receptive field (RepLKNet's method): exact supports of known stacks, area ratios, the CLI."""

import json

import pytest
import torch
from torch import nn

from moderncnn import create_model
from moderncnn.analysis import area_ratio, erf
from moderncnn.models.replknet import KERNEL_SIZE_STUDY


def _support(m: torch.Tensor) -> tuple[int, int]:
    rows = torch.nonzero(m.sum(1)).flatten()
    cols = torch.nonzero(m.sum(0)).flatten()
    return int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)


@pytest.mark.parametrize("k", [1, 3, 7, 13])
def test_single_conv_has_exactly_its_kernel_as_support(k):
    conv = nn.Conv2d(2, 3, k, padding=k // 2).double()
    nn.init.uniform_(conv.weight, 0.5, 1.0)  # no zero tap
    r = erf(conv, torch.randn(2, 2, 31, 31, dtype=torch.float64))
    assert int((r.map > 0).sum()) == k * k and _support(r.map) == (k, k)
    # the support is centred on the output's centre pixel
    assert r.map[15, 15] > 0 and r.map[15 - k // 2, 15 - k // 2] > 0


@pytest.mark.parametrize("n", [1, 2, 5])
def test_stack_of_3x3_convs_has_2n_plus_1_squared_support(n):
    stack = nn.Sequential(*[nn.Conv2d(2, 2, 3, padding=1) for _ in range(n)]).double()
    for c in stack:
        nn.init.uniform_(c.weight, 0.1, 1.0)  # positive weights: no accidental cancellation
    r = erf(stack, torch.randn(1, 2, 33, 33, dtype=torch.float64))
    side = 2 * n + 1
    assert int((r.map > 0).sum()) == side * side and _support(r.map) == (side, side)


def test_area_ratio_by_hand():
    m = torch.zeros(9, 9)
    m[4, 4] = 6.0  # centre: 60% of the total
    m[0, 0] = 4.0  # a corner: the other 40%
    assert area_ratio(m, 0.5) == pytest.approx(1 / 81)
    assert area_ratio(m, 0.6) == pytest.approx(1 / 81)
    assert area_ratio(m, 0.7) == pytest.approx(1.0)  # only the whole 9×9 reaches the corner
    m[3, 5] = 1.0
    assert area_ratio(m, 0.62) == pytest.approx(9 / 81)


def _replknet_erf(kernels, seed, size=384):
    torch.manual_seed(seed)
    model = create_model("replknet_31b_k" + "_".join(map(str, kernels)), channels=(8, 8, 16, 16),
                         layers=(2, 2, 6, 2), num_classes=0)
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(seed))
    return erf(model, x).map


def test_area_ratio_grows_with_kernel_size_at_initialization():
    """RepLKNet's kernel-size variants (narrow and shallow, two random initializations averaged): the
    high-contribution area at t = 20% grows from 3-3-3-3 to 7-7-7-7, 13-13-13-13 and 25-25-25-13. At
    initialization 31-29-27-13 is as large as 13-13-13-13 or larger, but not reliably above 25-25-25-13
    (see docs/architectures.md, ERF)."""
    ratios = {}
    for kernels in KERNEL_SIZE_STUDY:
        m = torch.stack([_replknet_erf(kernels, seed) for seed in (0, 1)]).mean(0)
        ratios[kernels] = area_ratio(torch.log10(1 + m), 0.2)
    r = [ratios[k] for k in KERNEL_SIZE_STUDY]
    assert r[0] < r[1] < r[2] < r[3], r
    assert r[4] >= r[2], r


def test_erf_restores_mode_and_validates():
    model = create_model("mobilenetv2_050", num_classes=0).train()
    r = erf(model, torch.randn(2, 3, 64, 64), batch_size=1)
    assert model.training and r.images == 2 and r.map.shape == (64, 64)
    assert set(r.ratios) == {0.2, 0.3, 0.5, 0.99}
    assert all(0 < v <= 1 for v in r.ratios.values())
    with pytest.raises(ValueError, match="threshold"):
        area_ratio(r.map, 1.5)


def test_erf_command(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    from pathlib import Path

    from moderncnn.cli import main
    from moderncnn.data.datasets import FASHION_MNIST_DIR

    if not Path(FASHION_MNIST_DIR).is_dir():
        pytest.skip(f"Fashion-MNIST not installed at {FASHION_MNIST_DIR}")
    out = tmp_path / "erf.png"
    rc = main(["erf", "mobilenetv2_050", "convnext_atto", "--images", "2", "--img-size", "64", "--out", str(out),
               "--quiet"])
    assert rc == 0
    assert out.stat().st_size > 1000
    rows = json.loads(out.with_suffix(".json").read_text())
    assert set(rows) == {"mobilenetv2_050", "convnext_atto"}
    assert rows["convnext_atto"]["images"] == 2
    assert set(rows["convnext_atto"]["area_ratio"]) == {"0.2", "0.3", "0.5", "0.99"}
    csv_lines = out.with_suffix(".csv").read_text().splitlines()
    assert csv_lines[0].startswith("model,images,size,ratio@0.2") and len(csv_lines) == 3
    assert "ratio@0.2" in capsys.readouterr().out
    assert main(["erf", "mobilenetv2_050", "--checkpoint", "a", "b", "--out", str(out)]) == 2


def test_erf_without_matplotlib_still_writes_the_ratios(tmp_path, monkeypatch, capsys):
    import sys

    from moderncnn.analysis.erf import ERFResult, plot, write_ratios

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    r = ERFResult(torch.ones(8, 8), 1, {0.2: 0.25})
    assert plot({"m": r}, tmp_path / "erf.png") is None
    assert "matplotlib is not installed" in capsys.readouterr().err
    assert not (tmp_path / "erf.png").exists()
    paths = write_ratios({"m": r}, tmp_path / "erf.png")
    assert [p.name for p in paths] == ["erf.csv", "erf.json"] and all(p.exists() for p in paths)
