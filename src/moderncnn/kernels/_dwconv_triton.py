"""Triton kernels for the large-kernel depthwise convolution (forward, grad input, grad weight).

Imported lazily by :mod:`moderncnn.kernels` (so ``import moderncnn`` never needs Triton). The design is
described in ``docs/kernels.md``; in short, both directions are small tensor-core GEMMs per channel:

* **Forward (and grad input).** For one channel and one kernel row ``i`` the output tile is
  ``Y[rows, cols] += X[rows + i - p, window] @ T_i[window, cols]`` where ``T_i`` is the banded
  (Toeplitz) matrix ``T_i[a, b] = w[i, a - b + p']`` built on the fly from the k weights of row ``i``.
  This is the "block-wise (inverse) implicit GEMM" of RepLKNet (Ding et al., CVPR 2022, §3 Remark 1),
  with the batch folded into the GEMM's M dimension. The input gradient is the same convolution with
  the kernel rotated by 180 degrees.
* **Grad weight.** ``dW[i, j] = sum_{n,u,w} x[n, u, w + j - p] * dy[n, u - i + p, w]``: for a group
  of input rows ``u`` this is ``A @ B`` with ``A[j, (u, w)]`` a sliding (Hankel) view of the input and
  ``B[(u, w), i]`` a sliding view of grad_output, so the whole k×k gradient tile is one
  ``KP×KP`` accumulator. Each program reduces its share of the N·H rows into its own partial tile
  (no atomics); a final ``sum`` over programs finishes the reduction.

All accumulation is float32; float32 inputs use 3xTF32 (``input_precision="tf32x3"``), which keeps
float32 accuracy on tensor cores. The kernels index with explicit strides, so any memory layout is
correct; the autograd function converts channels_last to NCHW first because coalesced row loads are
what makes the kernels fast (see ``docs/kernels.md`` for the measurement).
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
# Convert channels_last inputs to NCHW around the kernels (True) or index them in place (False).
CONVERT_CHANNELS_LAST = True
# Tuning hooks (benchmarks/large_kernel_dwconv.py --sweep): entries override the heuristic configs.
FWD_OVERRIDE: dict = {}
# Zero-pad the input's columns before the forward kernel (unmasked, vectorized row loads).
PAD_INPUT = True
WGRAD_OVERRIDE: dict = {}


def _next_pow2(n: int) -> int:
    return 1 << max(int(n) - 1, 0).bit_length()


# --------------------------------------------------------------------------------------------------
# Forward / grad-input kernel
# --------------------------------------------------------------------------------------------------


@triton.jit(do_not_specialize=["H", "W", "K", "PAD", "ROWS", "i_lo", "i_hi", "TAP_OFF"])
def _dw_fwd_kernel(
    x_ptr, w_ptr, b_ptr, y_ptr,
    H, W, K, PAD, ROWS, i_lo, i_hi, TAP_OFF,
    sxn, sxc, sxh, sxw,
    syn, syc, syh, syw,
    HAS_BIAS: tl.constexpr, BM: tl.constexpr, BW: tl.constexpr, KP: tl.constexpr,
    PADDED: tl.constexpr, PRECISION: tl.constexpr,
):
    # program (m-block x w-tile, channel); m-blocks of one channel are neighbours so halos hit in L2.
    pid = tl.program_id(0)
    c = tl.program_id(1)
    n_wt = tl.cdiv(W, BW)
    pm = pid // n_wt
    w0 = (pid % n_wt) * BW

    rows = pm * BM + tl.arange(0, BM)  # flattened (n, h) output rows
    row_ok = rows < ROWS
    n = rows // H
    h = rows % H
    cols_out = w0 + tl.arange(0, BW)
    if PADDED:
        # x was zero-padded (conv_forward) so that the window of this w-tile is KP in-bounds columns
        # starting at padded column w0: loads need no column mask and stay 16-byte aligned
        # (vectorized). tap = window column - output column + TAP_OFF (0 when PAD zeros were added
        # on the left, PAD when the window is the whole row starting at image column 0).
        a_cols = w0 + tl.arange(0, KP)
        tap = tl.arange(0, KP)[:, None] - tl.arange(0, BW)[None, :] + TAP_OFF
        col_ok = a_cols >= 0  # all true; keeps one code path for the mask below
    else:
        # window clipped to the image: starts at s >= 0, columns >= W are padding zeros
        s = tl.maximum(w0 - PAD, 0)
        a_cols = s + tl.arange(0, KP)
        col_ok = a_cols < W
        tap = a_cols[:, None] - cols_out[None, :] + PAD
    # banded weight T[a, b] = w[i, tap], zero outside [0, K)
    tap_ok = (tap >= 0) & (tap < K)

    x_row_base = x_ptr + n.to(tl.int64) * sxn + c.to(tl.int64) * sxc
    w_base = w_ptr + c * K * K
    acc = tl.zeros((BM, BW), dtype=tl.float32)
    for i in range(i_lo, i_hi):
        hin = h + i - PAD
        r_ok = row_ok & (hin >= 0) & (hin < H)
        a_ptrs = x_row_base[:, None] + hin[:, None] * sxh + a_cols[None, :] * sxw
        if PADDED:
            a = tl.load(a_ptrs, mask=r_ok[:, None], other=0.0)
        else:
            a = tl.load(a_ptrs, mask=r_ok[:, None] & col_ok[None, :], other=0.0)
        t = tl.load(w_base + i * K + tap, mask=tap_ok, other=0.0)
        acc = tl.dot(a, t.to(a.dtype), acc, input_precision=PRECISION)

    if HAS_BIAS:
        acc += tl.load(b_ptr + c).to(tl.float32)
    y_ptrs = y_ptr + (n.to(tl.int64) * syn + c.to(tl.int64) * syc + h * syh)[:, None] + cols_out[None, :] * syw
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=row_ok[:, None] & (cols_out < W)[None, :])


# --------------------------------------------------------------------------------------------------
# Grad-weight kernel
# --------------------------------------------------------------------------------------------------


@triton.jit
def _dw_wgrad_kernel(
    x_ptr, dy_ptr, part_ptr,
    H, W, PAD, ROWS, ROWS_PER_PROG, C,
    sxn, sxc, sxh, sxw,
    sdn, sdc, sdh, sdw,
    KP: tl.constexpr, RB: tl.constexpr, BW: tl.constexpr, PRECISION: tl.constexpr,
):
    sp = tl.program_id(0)  # which share of the N*H input rows
    c = tl.program_id(1)
    j = tl.arange(0, KP)  # tap column (GEMM M)
    ii = tl.arange(0, KP)  # tap row (GEMM N)
    q = tl.arange(0, RB * BW)  # GEMM K: RB input rows x BW columns
    q_row = q // BW
    q_col = q % BW

    x_c = x_ptr + c.to(tl.int64) * sxc
    dy_c = dy_ptr + c.to(tl.int64) * sdc
    r_start = sp * ROWS_PER_PROG
    r_end = tl.minimum(r_start + ROWS_PER_PROG, ROWS)
    acc = tl.zeros((KP, KP), dtype=tl.float32)
    for r0 in range(r_start, r_end, RB):
        r = r0 + q_row
        r_ok = r < r_end
        n = r // H
        u = r % H  # input row
        x_rows = x_c + n.to(tl.int64) * sxn + u * sxh  # (RB*BW,)
        dy_rows = dy_c + n.to(tl.int64) * sdn  # (RB*BW,)
        hout = u[:, None] - ii[None, :] + PAD  # (RB*BW, KP): output row that sees input row u at tap row i
        hout_ok = (hout >= 0) & (hout < H)
        for w0 in range(0, W, BW):
            w = w0 + q_col
            q_ok = r_ok & (w < W)
            xc = w[None, :] + j[:, None] - PAD  # (KP, RB*BW)
            a = tl.load(x_rows[None, :] + xc * sxw, mask=q_ok[None, :] & (xc >= 0) & (xc < W), other=0.0)
            b = tl.load(
                dy_rows[:, None] + hout * sdh + (w * sdw)[:, None], mask=q_ok[:, None] & hout_ok, other=0.0
            )
            acc = tl.dot(a, b.to(a.dtype), acc, input_precision=PRECISION)

    # partial[sp, c, i, j] (transposed on store so the host sum gives (C, K, K) directly)
    out = part_ptr + (sp * C + c).to(tl.int64) * KP * KP + ii[None, :] * KP + j[:, None]
    tl.store(out, acc)


# --------------------------------------------------------------------------------------------------
# Launch configuration
# --------------------------------------------------------------------------------------------------


def _fwd_tiles(W: int, k: int) -> tuple[int, int]:
    """(BW, KP): output-tile width and input-window width minimizing GEMM work per output pixel.

    A w-tile of BW outputs needs an input window of BW + k - 1 columns, clipped to the row width,
    rounded up to a power of two (tl.dot shapes); the cost per output is
    (padded tiles / W) * window. Ties go to the wider tile (fewer programs, more reuse).
    """
    best = None
    for bw in (16, 32, 64):
        kp = max(16, _next_pow2(min(bw + k - 1, W)))
        cost = -(-W // bw) * bw * kp
        if best is None or cost <= best[0]:
            best = (cost, bw, kp)
    return best[1], best[2]


def _fwd_config(N: int, C: int, H: int, W: int, k: int, dtype: torch.dtype) -> dict:
    bw, kp = _fwd_tiles(W, k)
    # Rows per program: large M tiles amortize the banded-weight construction; 4-byte operands need
    # half the registers/shared memory, so float32 keeps BM lower for the wide windows.
    bm = 128 if (kp <= 64 or dtype != torch.float32) else 64
    if INTERPRET:
        bm = 16
    num_warps = 8 if bm * bw >= 128 * 64 else 4
    if H <= 14 and not INTERPRET:  # small maps: more, smaller programs (measured, docs/kernels.md)
        bm, num_warps = 64, 4
    cfg = dict(BM=bm, BW=bw, KP=kp, num_warps=num_warps, num_stages=3)
    cfg.update(FWD_OVERRIDE)
    if "BW" in FWD_OVERRIDE and "KP" not in FWD_OVERRIDE:
        cfg["KP"] = max(16, _next_pow2(min(cfg["BW"] + k - 1, W)))
    # Zero-pad x so the kernel's loads need no column mask when either the full window fits in KP
    # ("left": PAD zeros on the left) or one tile covers the whole row ("row": zeros on the right).
    if not PAD_INPUT:
        cfg.setdefault("PADDED", None)
    elif cfg["KP"] >= cfg["BW"] + k - 1:
        cfg.setdefault("PADDED", "left")
    elif cfg["BW"] >= W and cfg["KP"] >= W:
        cfg.setdefault("PADDED", "row")
    else:
        cfg.setdefault("PADDED", None)
    return cfg


def _wgrad_config(N: int, C: int, H: int, W: int, k: int, device: torch.device) -> dict:
    kp = max(16, _next_pow2(k))
    bw = min(64, max(1, _next_pow2(W)))
    rb = max(1, WGRAD_OVERRIDE.get("QK", 64) // bw)  # GEMM K: several narrow rows at once for small maps
    if INTERPRET:
        rb = max(1, 16 // bw)
    rows = N * H
    n_sm = 132 if INTERPRET else torch.cuda.get_device_properties(device).multi_processor_count
    # enough programs for ~8 waves over the SMs, but each program keeps >= 4 GEMM steps of rows
    # measured: 32 waves beat 8 on the 28²/56² maps (more, shorter programs), not on 14²/7²
    waves = WGRAD_OVERRIDE.get("waves", 32 if H >= 28 else 8)
    split = max(1, min(-(-waves * n_sm // C), -(-rows // (4 * rb))))
    rows_per_prog = -(-rows // split)
    rows_per_prog = -(-rows_per_prog // rb) * rb
    split = -(-rows // rows_per_prog)
    return dict(
        KP=kp, BW=bw, RB=rb, split=split, rows_per_prog=rows_per_prog,
        num_warps=WGRAD_OVERRIDE.get("num_warps", 4),
        num_stages=WGRAD_OVERRIDE.get("num_stages", 2),
    )


def _precision(dtype: torch.dtype) -> str:
    return "tf32x3" if dtype == torch.float32 else "tf32"


# --------------------------------------------------------------------------------------------------
# Launchers
# --------------------------------------------------------------------------------------------------


def conv_forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """y = depthwise conv (stride 1, 'same') of x (N, C, H, W) with weight (C, k, k), any strides."""
    N, C, H, W = x.shape
    k = weight.shape[-1]
    pad = k // 2
    w = weight.reshape(C, k * k).contiguous()
    y = torch.empty((N, C, H, W), device=x.device, dtype=x.dtype)
    if x.numel() == 0:
        return y
    cfg = _fwd_config(N, C, H, W, k, x.dtype)
    i_lo, i_hi = max(0, pad - H + 1), min(k, pad + H)  # kernel rows that ever touch the image
    n_wt = triton.cdiv(W, cfg["BW"])
    tap_off = 0
    if cfg["PADDED"]:
        # pad columns (left: `pad` zeros; right: up to the last window's end), width rounded to 16
        # elements so every row starts 16-byte aligned. One copy, which also converts channels_last.
        left = pad if cfg["PADDED"] == "left" else 0
        tap_off = pad - left
        wp = -(-((n_wt - 1) * cfg["BW"] + cfg["KP"]) // 16) * 16
        x = F.pad(x, (left, wp - W - left)).contiguous()
    grid = (triton.cdiv(N * H, cfg["BM"]) * n_wt, C)
    _dw_fwd_kernel[grid](
        x, w, bias if bias is not None else w, y,
        H, W, k, pad, N * H, i_lo, i_hi, tap_off,
        *x.stride(), *y.stride(),
        HAS_BIAS=bias is not None, BM=cfg["BM"], BW=cfg["BW"], KP=cfg["KP"], PADDED=bool(cfg["PADDED"]),
        PRECISION=_precision(x.dtype), num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )
    return y


def conv_wgrad(x: torch.Tensor, dy: torch.Tensor, k: int) -> torch.Tensor:
    """dW (C, k, k) in float32 of the depthwise conv, from input x and grad_output dy (any strides)."""
    N, C, H, W = x.shape
    if x.numel() == 0:
        return torch.zeros((C, k, k), device=x.device, dtype=torch.float32)
    cfg = _wgrad_config(N, C, H, W, k, x.device)
    kp = cfg["KP"]
    part = torch.empty((cfg["split"], C, kp, kp), device=x.device, dtype=torch.float32)
    _dw_wgrad_kernel[(cfg["split"], C)](
        x, dy, part,
        H, W, k // 2, N * H, cfg["rows_per_prog"], C,
        *x.stride(), *dy.stride(),
        KP=kp, RB=cfg["RB"], BW=cfg["BW"], PRECISION=_precision(x.dtype),
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )
    return part.sum(0)[:, :k, :k]


# --------------------------------------------------------------------------------------------------
# Autograd
# --------------------------------------------------------------------------------------------------


def _to_kernel_layout(t: torch.Tensor) -> torch.Tensor:
    if CONVERT_CHANNELS_LAST and not t.is_contiguous():
        return t.contiguous()
    return t


class DepthwiseConv2dTriton(torch.autograd.Function):
    """Autograd wrapper: forward, grad input (rotated-kernel forward), grad weight, grad bias."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        xk = _to_kernel_layout(x)
        y = conv_forward(xk, weight, bias)
        ctx.save_for_backward(xk, weight)
        ctx.has_bias = bias is not None
        ctx.bias_dtype = bias.dtype if bias is not None else None
        ctx.channels_last = channels_last
        if channels_last:  # match F.conv2d: the output keeps the input's memory format
            y = y.contiguous(memory_format=torch.channels_last)
        return y

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        xk, weight = ctx.saved_tensors
        k = weight.shape[-1]
        dy = _to_kernel_layout(grad_out)
        if dy.dtype != xk.dtype:
            dy = dy.to(xk.dtype)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = conv_forward(dy, weight.flip(-1, -2), None)
            if ctx.channels_last:
                grad_x = grad_x.contiguous(memory_format=torch.channels_last)
        if ctx.needs_input_grad[1]:
            grad_w = conv_wgrad(xk, dy, k).reshape(weight.shape).to(weight.dtype)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = dy.sum(dim=(0, 2, 3), dtype=torch.float32).to(ctx.bias_dtype)
        return grad_x, grad_w, grad_b
