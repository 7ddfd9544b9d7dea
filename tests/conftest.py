import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

REPO = Path(__file__).resolve().parents[1]
# the golden files of the official implementations (../shared beside the checkout, as in CI; or elsewhere)
SHARED = Path(os.environ.get("MODERNCNN_SHARED", REPO.parent / "shared"))
REFERENCE = SHARED / "reference"
OFFICIAL = REFERENCE / "official"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def randomize_bn(model: torch.nn.Module, batches: int = 2, input_size: int = 64, seed: int = 0) -> None:
    """Calibrate BatchNorm statistics so no fusion test passes by accident (STYLE.md).

    Random affine parameters, then running statistics gathered from a few random batches in train mode
    (momentum None = cumulative average), then back to eval mode.
    """
    g = torch.Generator().manual_seed(seed)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    with torch.no_grad():
        for bn in bns:
            if bn.weight is not None:
                bn.weight.copy_(torch.rand(bn.weight.shape, generator=g) * 1.5 + 0.25)
                bn.bias.copy_(torch.randn(bn.bias.shape, generator=g) * 0.2)
            bn.reset_running_stats()
            bn.momentum = None
        model.train()
        dtype = next(model.parameters()).dtype
        for _ in range(batches):
            model(torch.randn(2, model.in_chans, input_size, input_size, generator=g).to(dtype))
        for bn in bns:
            bn.momentum = 0.1
    model.eval()


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b|: the parity metric used throughout the tests."""
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


@pytest.fixture
def plain_torch():
    """Run models as plain PyTorch does (``F.conv2d`` everywhere, NCHW): for parity tests whose float32
    tolerance says "the same kernels in the same order" (the dispatch's own numerics: tests/test_kernels.py)."""
    from moderncnn import kernels

    old = kernels.get_default_impl()
    kernels.set_default_impl("torch")
    yield
    kernels.set_default_impl(old)
