"""Fast operators behind one dispatch point each.

``depthwise_conv2d`` is the single entry for RepLKNet's large depthwise convolutions (Ding et al.,
"Scaling Up Your Kernels to 31x31", CVPR 2022, §3 Guideline 1 and Remark 1): stride 1, 'same'
padding, odd kernel. Implementations:

* ``"torch"``  -- PyTorch's ``F.conv2d`` (cuDNN for channels_last, the native depthwise kernel for NCHW).
* ``"triton"`` -- our tensor-core kernels (``_dwconv_triton.py``; design in ``docs/kernels.md``)
  wrapped in a full ``torch.autograd.Function``.
* ``"auto"``   -- the module default (see :func:`set_default_impl`); its own default policy picks, per
  device, layout, dtype, kernel size and whether a backward pass follows, whichever was measured
  fastest: on an H100 our kernels or PyTorch's (table ``_TRITON_MIN_K``); on the CPU PyTorch's
  kernel, for large kernels (:func:`_cpu_onednn_path`) only its fast channels_last forward, which
  also yields the gradients (``_dwconv_cpu.py``). Meta tensors use ``F.conv2d``.

Triton is imported only when the Triton path is first used, so ``import moderncnn`` never needs it.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

_IMPLS = ("auto", "torch", "triton")
_TRITON_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_MAX_TRITON_K = 63

# Smallest kernel size from which the Triton path beats PyTorch on the same input layout, measured
# on an H100 (torch 2.11, triton 3.6, batch 64, RepLKNet-31B stage shapes; docs/benchmarks-dwconv.md),
# keyed by (channels_last, needs_backward, float32). float32 runs 3xTF32 (three MMAs per product), so
# it needs larger kernels to pay off; PyTorch's channels_last path (cuDNN) is near the memory floor up
# to k=7 but collapses from k=13 on, its NCHW kernel scales with k² from k=5 on.
_TRITON_MIN_K: dict[tuple[bool, bool, bool], int] = {
    (False, False, False): 7,
    (False, False, True): 27,
    (False, True, False): 7,
    (False, True, True): 13,
    (True, False, False): 13,
    (True, False, True): 13,
    (True, True, False): 13,
    (True, True, True): 13,
}
# Inference on NCHW maps this small (7² and below): PyTorch's native kernel wins at every k.
_TORCH_NCHW_INFERENCE_MAX_HW = 64
# On maps up to 14² the fixed costs of our three launches dominate at k=7: Triton from k=13 only.
_SMALL_MAP_HW, _SMALL_MAP_MIN_K = 196, 13

# CPU, float32/bfloat16 (torch 2.14, oneDNN, 2-core x86; benchmarks/cpu_dwconv.py): PyTorch's NCHW
# forward from k=15 on, and its weight gradient in either layout from k=5 on, leave oneDNN for loops
# 2-40x slower than oneDNN's channels_last forward; ``_dwconv_cpu`` then computes output and gradients
# with that forward alone (1.6-3.3x faster forward+backward at k=5-13, 9-13x at k=15-31). Smallest k
# from which it does, keyed by (stride, needs_backward, channels_last input), read off the op table of
# docs/benchmarks-cpu-dwconv.md: at k=3 PyTorch's own weight gradient is oneDNN's and 3-20x faster than
# the phrasing as a forward, and converting an NCHW input to channels_last and back costs more than a
# small kernel's forward; on channels_last input PyTorch's own 5×5 weight gradient is as fast as the
# phrasing (0.7-1.0x), from k=7 it is not (1.1-2.6x); at stride 2 the weight gradient is a dilated conv,
# which oneDNN runs slowly in channels_last (3x slower than PyTorch's at k=5-7, 3x faster at k=15).
# Below these sizes, and for float64/float16 (where oneDNN's channels_last path is the slow one),
# F.conv2d runs on the input as given.
_CPU_MIN_K: dict[tuple[int, bool, bool], int] = {
    (1, False, False): 15,
    (1, False, True): 15,
    (1, True, False): 5,
    (1, True, True): 7,
    (2, False, False): 15,
    (2, False, True): 15,
    (2, True, False): 7,
    (2, True, True): 15,
}
_CPU_FAST_DTYPES = (torch.float32, torch.bfloat16)
# preferred_layout leaves maps with this few channels in NCHW (a torch 2.14 CPU crash, see there)
_CPU_NCHW_MAX_CHANNELS = 8

_default_impl = os.environ.get("MODERNCNN_DWCONV_IMPL", "auto")


def set_default_impl(impl: str) -> None:
    """Choose what ``depthwise_conv2d(..., impl="auto")`` runs: "auto" (measured table), "torch", "triton".

    Benchmarks use it to switch a whole model between implementations; the environment variable
    ``MODERNCNN_DWCONV_IMPL`` sets the initial value.
    """
    global _default_impl
    _check_impl(impl)
    _default_impl = impl


def get_default_impl() -> str:
    """The implementation ``impl="auto"`` currently resolves through (see :func:`set_default_impl`)."""
    return _default_impl


def _check_impl(impl: str) -> None:
    if impl not in _IMPLS:
        raise ValueError(f"depthwise_conv2d: impl must be one of {_IMPLS}, got {impl!r}")


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _validate(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: int) -> int:
    if stride not in (1, 2):
        raise ValueError(
            f"depthwise_conv2d supports stride 1 ('same' output size) or 2 (padding k // 2), got stride={stride}; "
            "use F.conv2d(..., groups=C) for other strides"
        )
    if x.dim() != 4:
        raise ValueError(f"depthwise_conv2d expects x of shape (N, C, H, W), got {tuple(x.shape)}")
    C = x.shape[1]
    if weight.dim() != 4 or weight.shape[0] != C or weight.shape[1] != 1 or weight.shape[2] != weight.shape[3]:
        raise ValueError(
            f"depthwise_conv2d expects weight of shape (C, 1, k, k) = ({C}, 1, k, k) for x with C={C} "
            f"channels, got {tuple(weight.shape)}"
        )
    k = weight.shape[-1]
    if k % 2 == 0:
        raise ValueError(
            f"depthwise_conv2d needs an odd kernel size so that 'same' padding k//2 centres it, got k={k}"
        )
    if bias is not None and (bias.dim() != 1 or bias.shape[0] != C):
        raise ValueError(f"depthwise_conv2d expects bias of shape ({C},), got {tuple(bias.shape)}")
    return k


def _is_channels_last(x: torch.Tensor) -> bool:
    return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def _needs_backward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    return torch.is_grad_enabled() and (
        x.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)
    )


def _auto_impl(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, k: int) -> str:
    if x.device.type != "cuda":
        return "torch"
    if x.dtype not in _TRITON_DTYPES and not torch.is_autocast_enabled("cuda"):
        return "torch"
    if k > _MAX_TRITON_K:
        return "torch"
    channels_last = _is_channels_last(x)
    train = _needs_backward(x, weight, bias)
    if torch.is_autocast_enabled("cuda"):
        fp32 = torch.get_autocast_dtype("cuda") == torch.float32
    else:
        fp32 = x.dtype == torch.float32
    if not channels_last and not train and x.shape[-2] * x.shape[-1] <= _TORCH_NCHW_INFERENCE_MAX_HW:
        return "torch"
    min_k = _TRITON_MIN_K[(channels_last, train, fp32)]
    if x.shape[-2] * x.shape[-1] <= _SMALL_MAP_HW:
        min_k = max(min_k, _SMALL_MAP_MIN_K)
    return "triton" if k >= min_k else "torch"


def _cpu_onednn_path(x: torch.Tensor, k: int, train: bool, stride: int = 1) -> bool:
    """Whether this CPU call goes through oneDNN's channels_last forward (see ``_CPU_MIN_K``)."""
    return (
        x.dtype in _CPU_FAST_DTYPES and not torch.is_autocast_enabled("cpu")
        and k >= _CPU_MIN_K[(stride, train, _is_channels_last(x))]
    )


def preferred_layout(x: torch.Tensor) -> torch.Tensor:
    """``x`` in the memory format the models run fastest in on its device (``forward_stem`` converts the
    stem's output with it).

    On the CPU (float32/bfloat16 batches) that is channels_last: oneDNN's depthwise convolutions and their
    gradients are 2-15x faster there than in NCHW (docs/benchmarks-cpu-dwconv.md), the 1×1 and dense convs,
    BatchNorm and activations keep the layout, and ConvNeXt's NHWC permutes become free; whole models measured
    faster in both training and inference (docs/benchmarks-cpu-models.md). Maps with at most 8 channels (the
    image itself: RepVGG has no stem before its first block) stay NCHW: the weight gradient of a channels_last
    1×1 stride-2 conv with 3-8 input channels corrupts the heap in torch 2.14's CPU build (docs/kernels.md).
    Elsewhere, and with ``set_default_impl("torch")`` (plain PyTorch everywhere), ``x`` is returned as given.
    """
    if (
        x.device.type == "cpu" and x.dim() == 4 and x.shape[1] > _CPU_NCHW_MAX_CHANNELS
        and x.dtype in _CPU_FAST_DTYPES and _default_impl != "torch" and not torch.is_autocast_enabled("cpu")
    ):
        return x.contiguous(memory_format=torch.channels_last)
    return x


def depthwise_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    impl: str = "auto",
    *,
    stride: int = 1,
) -> torch.Tensor:
    """Depthwise conv with padding k // 2: ``x`` (N, C, H, W), ``weight`` (C, 1, k, k), odd k, stride 1
    ('same' output size) or 2.

    ``impl`` is "auto" (the module default, :func:`set_default_impl`), "torch" (``F.conv2d``) or
    "triton" (our kernels; CUDA, stride 1, float32/bfloat16/float16, k <= 63). Any batch and spatial size
    works, kernels larger than the image included, in NCHW or channels_last; the output has the input's
    memory format and dtype, and sums are accumulated in float32. Under autocast the inputs are cast
    to the autocast dtype as ``F.conv2d`` would be.
    """
    _check_impl(impl)
    k = _validate(x, weight, bias, stride)
    if impl == "auto":
        impl = _default_impl
    # meta tensors carry no data: shape inference is F.conv2d's job whatever was asked for
    if x.device.type == "meta" or weight.device.type == "meta":
        impl = "torch"
    if impl == "auto":
        impl = _auto_impl(x, weight, bias, k) if stride == 1 else "torch"
        if x.device.type == "cpu":
            train = _needs_backward(x, weight, bias)
            if _cpu_onednn_path(x, k, train, stride):
                from ._dwconv_cpu import DepthwiseConv2dCPU, same_dwconv

                if train:
                    return DepthwiseConv2dCPU.apply(x, weight, bias, stride)
                return same_dwconv(x, weight, bias, stride=stride)
    if impl == "torch":
        return F.conv2d(x, weight, bias, stride=stride, padding=k // 2, groups=x.shape[1])

    # --- Triton path ---
    if stride != 1:
        raise ValueError(f"depthwise_conv2d(impl='triton') supports stride 1 only, got stride={stride}")
    if x.device.type != "cuda" and not _interpreting():
        raise RuntimeError(
            f"depthwise_conv2d(impl='triton') needs CUDA tensors, got device {x.device}; use impl='auto' "
            "(which picks F.conv2d off the GPU) or set TRITON_INTERPRET=1 before importing triton to run "
            "the kernels in Triton's interpreter"
        )
    if k > _MAX_TRITON_K:
        raise ValueError(f"depthwise_conv2d(impl='triton') supports k <= {_MAX_TRITON_K}, got k={k}")
    if weight.device != x.device or (bias is not None and bias.device != x.device):
        raise ValueError(
            f"depthwise_conv2d: x, weight and bias must be on one device, got x on {x.device}, "
            f"weight on {weight.device}" + (f", bias on {bias.device}" if bias is not None else "")
        )
    if x.device.type == "cuda" and torch.is_autocast_enabled("cuda"):
        dtype = torch.get_autocast_dtype("cuda")
        x, weight = x.to(dtype), weight.to(dtype)
        bias = bias.to(dtype) if bias is not None else None
    if x.dtype not in _TRITON_DTYPES:
        raise TypeError(f"depthwise_conv2d(impl='triton') supports {_TRITON_DTYPES}, got {x.dtype}")
    if weight.dtype != x.dtype or (bias is not None and bias.dtype != x.dtype):
        raise TypeError(
            f"depthwise_conv2d: x, weight and bias must share a dtype (as for F.conv2d), got x {x.dtype}, "
            f"weight {weight.dtype}" + (f", bias {bias.dtype}" if bias is not None else "")
            + "; cast them, or run under torch.autocast"
        )
    from ._dwconv_triton import DepthwiseConv2dTriton

    if x.device.type != "cuda":  # Triton's interpreter on CPU tensors (tests)
        return DepthwiseConv2dTriton.apply(x, weight, bias)
    with torch.autocast("cuda", enabled=False):
        return DepthwiseConv2dTriton.apply(x, weight, bias)


__all__ = ["depthwise_conv2d", "get_default_impl", "preferred_layout", "set_default_impl"]
