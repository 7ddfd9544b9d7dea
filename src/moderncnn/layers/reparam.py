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


def fuse_conv_bn_tensors(
    kernel: torch.Tensor, bn: nn.BatchNorm2d, conv_bias: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Kernel and bias of ``bn(conv(x))`` as one conv: W·t and β + (b − μ)·t with t = γ/√(σ²+ε).

    Differentiable in every input (no in-place ops), so it can also serve custom regularizers.
    """
    std = (bn.running_var + bn.eps).sqrt()
    gamma = bn.weight if bn.weight is not None else torch.ones_like(std)
    beta = bn.bias if bn.bias is not None else torch.zeros_like(std)
    t = gamma / std
    bias = conv_bias if conv_bias is not None else torch.zeros_like(bn.running_mean)
    return kernel * t.reshape(-1, *([1] * (kernel.ndim - 1))), beta + (bias - bn.running_mean) * t


@torch.no_grad()
def fuse_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A new conv (with bias, same class, same geometry) equal to ``bn(conv(x))`` in eval mode."""
    w, b = fuse_conv_bn_tensors(conv.weight, bn, conv.bias)
    fused = copy.deepcopy(conv)
    if fused.bias is None:
        fused.bias = nn.Parameter(torch.empty_like(b))
    fused.weight.copy_(w)
    fused.bias.copy_(b)
    return fused


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
