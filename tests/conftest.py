import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

REPO = Path(__file__).resolve().parents[1]
# golden outputs and key layouts of the official implementations, shipped with the tests (tests/data/README.md)
OFFICIAL = REPO / "tests" / "data" / "official"
# the full reference data (../shared beside the checkout, as in CI, or MODERNCNN_SHARED): extra checks only
SHARED = Path(os.environ.get("MODERNCNN_SHARED", REPO.parent / "shared"))
SHARED_OFFICIAL = SHARED / "reference" / "official"


def official_file(name: str) -> Path:
    """``tests/data/official/<name>``, else the same file of the full reference data.

    A file shipped with the tests that is missing fails the test with its path; a file only the full
    reference data has (``mobilenext_100``, most key layouts) skips the test, saying where it looked.
    """
    shipped, extra = OFFICIAL / name, SHARED_OFFICIAL / name
    if shipped.is_file():
        return shipped
    if extra.is_file():
        return extra
    if (OFFICIAL / "MANIFEST").is_file() and name in (OFFICIAL / "MANIFEST").read_text().split():
        pytest.fail(f"test data {shipped} is missing (it ships with the repository; restore it with git)")
    pytest.skip(f"{name} is not shipped with the tests and the full reference data is absent ({extra}); "
                "put shared/ beside the checkout or set MODERNCNN_SHARED to run this extra check")


def official_key_files(prefix: str) -> list[Path]:
    """Key-layout files ``keys/<prefix>*.keys.txt``: the shipped ones plus any the full reference data adds."""
    found = {p.name: p for p in (SHARED_OFFICIAL / "keys").glob(f"{prefix}*.keys.txt")}
    found.update({p.name: p for p in (OFFICIAL / "keys").glob(f"{prefix}*.keys.txt")})
    return [found[n] for n in sorted(found)]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def randomize_bn(model: torch.nn.Module, batches: int = 2, input_size: int = 64, seed: int = 0) -> None:
    """Calibrate BatchNorm statistics so no fusion test passes by accident (a fresh BatchNorm is an identity).

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
