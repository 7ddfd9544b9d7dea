"""Depthwise conv on the CPU from oneDNN's fast channels_last forward alone.

PyTorch's CPU depthwise convolution is fast in one case: the channels_last forward (oneDNN). Its NCHW
forward from k=15 on, and its weight gradient in both layouts from k=5 on, fall to loops 2-40x slower
(``benchmarks/cpu_dwconv.py``). All three products of a depthwise conv with padding p = k // 2 and stride s
can be phrased as that fast forward (N images, C channels, H×W maps in, Ho×Wo out, odd k):

* output:       ``y = dwconv(x, w, stride=s)`` on a channels_last copy of ``x``;
* grad input:   for s = 1 ``dx = dwconv(dy, flip(w))``, the same conv with the kernel rotated by 180°;
  for s = 2 the transposed conv of ``dy`` (oneDNN's backward-data, fast in channels_last);
* grad weight:  ``dw[c, i, j] = Σ_{n,h,w} pad(x)[n, c, s·h + i, s·w + j] · dy[n, c, h, w]``, a *valid*
  depthwise conv of ``pad(x)`` (N·C channels) whose kernel is ``dy`` itself (Ho×Wo, dilated by s), giving
  N·C maps of at least k×k whose first k×k are summed over n;
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


def same_dwconv(
    x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, like: torch.Tensor | None = None, stride: int = 1
) -> torch.Tensor:
    """Depthwise conv of ``x`` with padding k // 2 run in channels_last (oneDNN's fast path), returned in
    the memory format of ``like`` (default: ``x``)."""
    y = F.conv2d(x.contiguous(memory_format=_CL), w, b, stride=stride, padding=w.shape[-1] // 2, groups=x.shape[1])
    return y.contiguous(memory_format=_layout(x if like is None else like))


class DepthwiseConv2dCPU(torch.autograd.Function):
    """``F.conv2d(x, w, b, stride, padding=k // 2, groups=C)`` whose forward and backward run as oneDNN
    forwards (and, for stride 2, oneDNN's transposed conv for the input gradient)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: int = 1):
        ctx.save_for_backward(x, weight)
        ctx.has_bias, ctx.stride = bias is not None, stride
        return same_dwconv(x, weight, bias, stride=stride)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: torch.Tensor):
        x, weight = ctx.saved_tensors
        s = ctx.stride
        N, C, H, W = x.shape
        Ho, Wo = grad_out.shape[-2:]
        k, p = weight.shape[-1], weight.shape[-1] // 2
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            if s == 1:
                grad_x = same_dwconv(grad_out, weight.flip(-1, -2), None, like=x)
            else:  # the rows/columns the strided forward never reached get output_padding
                extra = (H + 2 * p - k - (Ho - 1) * s, W + 2 * p - k - (Wo - 1) * s)
                grad_x = F.conv_transpose2d(
                    grad_out.contiguous(memory_format=_CL), weight, stride=s, padding=p, output_padding=extra,
                    groups=C,
                ).contiguous(memory_format=_layout(x))
        if ctx.needs_input_grad[1]:
            xp = F.pad(x, (p, p, p, p)).reshape(1, N * C, H + 2 * p, W + 2 * p).contiguous(memory_format=_CL)
            dy = grad_out.reshape(N * C, 1, Ho, Wo).contiguous()
            gw = F.conv2d(xp, dy, groups=N * C, dilation=s)[..., :k, :k]
            grad_w = gw.reshape(N, C, k, k).sum(0).unsqueeze(1).to(weight.dtype)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad_out.sum((0, 2, 3))
        return grad_x, grad_w, grad_b, None
