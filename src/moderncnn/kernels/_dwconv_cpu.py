"""Large-kernel depthwise conv on the CPU from oneDNN's fast channels_last forward alone.

PyTorch's CPU depthwise convolution is fast in one case: the channels_last forward (oneDNN). Its NCHW
forward from k=15 on, and its weight gradient in both layouts from k=5 on, fall to loops 2-40x slower
(``benchmarks/cpu_dwconv.py``). All three products of a 'same' depthwise conv can be phrased as that fast
forward (N images, C channels, H×W maps, odd k, p = k // 2):

* output:       ``y = dwconv(x, w)`` on a channels_last copy of ``x``;
* grad input:   ``dx = dwconv(dy, flip(w))``, the same conv with the kernel rotated by 180°;
* grad weight:  ``dw[c, i, j] = Σ_{n,h,w} pad(x)[n, c, h + i, w + j] · dy[n, c, h, w]``, a *valid*
  depthwise conv of ``pad(x)`` (N·C channels, (H + 2p)×(W + 2p)) whose kernel is ``dy`` itself (H×W), giving
  N·C maps of k×k that are summed over n;
* grad bias:    ``db = Σ_{n,h,w} dy``.

Results come back in the input's memory format; sums are oneDNN's (float32 accumulation).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

_CL = torch.channels_last


def _layout(x: torch.Tensor) -> torch.memory_format:
    return _CL if x.is_contiguous(memory_format=_CL) and not x.is_contiguous() else torch.contiguous_format


def same_dwconv(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, like: torch.Tensor | None = None):
    """Stride-1 'same' depthwise conv of ``x`` run in channels_last (oneDNN's fast path), returned in the
    memory format of ``like`` (default: ``x``)."""
    y = F.conv2d(x.contiguous(memory_format=_CL), w, b, padding=w.shape[-1] // 2, groups=x.shape[1])
    return y.contiguous(memory_format=_layout(x if like is None else like))


class DepthwiseConv2dCPU(torch.autograd.Function):
    """``F.conv2d(x, w, b, padding=k // 2, groups=C)`` whose forward and backward run as oneDNN forwards."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return same_dwconv(x, weight, bias)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: torch.Tensor):
        x, weight = ctx.saved_tensors
        N, C, H, W = x.shape
        k, p = weight.shape[-1], weight.shape[-1] // 2
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = same_dwconv(grad_out, weight.flip(-1, -2), None, like=x)
        if ctx.needs_input_grad[1]:
            xp = F.pad(x, (p, p, p, p)).reshape(1, N * C, H + 2 * p, W + 2 * p).contiguous(memory_format=_CL)
            dy = grad_out.reshape(N * C, 1, H, W).contiguous()
            grad_w = F.conv2d(xp, dy, groups=N * C).reshape(N, C, k, k).sum(0).unsqueeze(1).to(weight.dtype)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad_out.sum((0, 2, 3))
        return grad_x, grad_w, grad_b
