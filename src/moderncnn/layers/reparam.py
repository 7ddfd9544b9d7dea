"""Structural re-parameterization helpers shared by RepVGG, RepLKNet and the deploy fuser."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn


def check_eval(module: nn.Module) -> None:
    if module.training:
        raise RuntimeError(
            f"{type(module).__name__}: re-parameterization folds BatchNorm running statistics, so the "
            "model must be in eval mode; call model.eval() first."
        )


def bn_affine(bn: nn.modules.batchnorm._BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """An eval-mode BatchNorm as the per-channel map ``y = x·t + s``: ``t = γ/√(σ²+ε)``, ``s = β − μ·t``."""
    t = (bn.running_var + bn.eps).rsqrt()
    if bn.weight is not None:
        t = t * bn.weight
    s = -bn.running_mean * t
    if bn.bias is not None:
        s = s + bn.bias
    return t, s


def fold_bn(
    kernel: torch.Tensor, bn: nn.modules.batchnorm._BatchNorm, conv_bias: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Kernel and bias of ``bn(conv(x))`` as one conv: ``W·t`` and ``b·t + s`` (:func:`bn_affine`).

    The one BatchNorm fold of the package (Rep blocks, ``ConvBN``, :func:`moderncnn.fuse`). Differentiable
    in every input (no in-place ops), so it can also serve custom regularizers.
    """
    t, s = bn_affine(bn)
    bias = s if conv_bias is None else conv_bias * t + s
    return kernel * t.reshape(-1, *([1] * (kernel.ndim - 1))), bias


@torch.no_grad()
def merged_conv(block: nn.Module, make_conv) -> nn.Conv2d:
    """The single conv a multi-branch block merges into (eval mode): ``make_conv(device=, dtype=)`` loaded
    with ``block.equivalent_kernel_bias()``. RepVGG and RepLKNet blocks build their deploy form with it."""
    check_eval(block)
    kernel, bias = block.equivalent_kernel_bias()
    conv = make_conv(device=kernel.device, dtype=kernel.dtype)
    conv.weight.copy_(kernel)
    conv.bias.copy_(bias)
    return conv


def pad_kernel_to(kernel: torch.Tensor, size: int) -> torch.Tensor:
    """Zero-pad a (odd, square) kernel symmetrically to ``size``×``size`` so the centres align."""
    k = kernel.shape[-1]
    if k == size:
        return kernel
    if k > size or (size - k) % 2:
        raise ValueError(f"cannot centre a {k}×{k} kernel in a {size}×{size} one")
    p = (size - k) // 2
    return F.pad(kernel, [p, p, p, p])


def identity_kernel(channels: int, groups: int, size: int = 3, *, dtype=None, device=None) -> torch.Tensor:
    """The (C, C/g, k, k) kernel of a grouped conv that returns its input: I[c, c mod C/g, k/2, k/2] = 1."""
    per_group = channels // groups
    kernel = torch.zeros(channels, per_group, size, size, dtype=dtype, device=device)
    idx = torch.arange(channels, device=device)
    kernel[idx, idx % per_group, size // 2, size // 2] = 1
    return kernel


def reparameterize_model(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Fuse every re-parameterizable block (RepVGG, RepLKNet, conv-BN) into its deploy form.

    Calls ``reparameterize()`` on every sub-module that has one, innermost first. Fusing twice is a
    no-op. The model must be in eval mode (BatchNorm statistics are folded).
    """
    check_eval(model)
    if not inplace:
        model = copy.deepcopy(model)
    for module in reversed(list(model.modules())):
        if module is not model and hasattr(module, "reparameterize"):
            module.reparameterize()
    return model
