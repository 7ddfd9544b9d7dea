"""moderncnn.kernels.depthwise_conv2d: dispatch, validation, and the Triton kernels' numerics.

The kernels are checked against ``F.conv2d`` in float64 (forward and the gradients wrt input, weight
and bias) on random shapes. Without a GPU they run in Triton's interpreter, which must be switched on
before triton is first imported, so those checks run in one subprocess; the interpreter's bfloat16
``tl.dot`` is broken (triton 3.8), so there the low-precision path is exercised in float16 and
bfloat16 is checked under the ``gpu`` marker, together with every shape the benchmark times.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

from conftest import rel_err
from moderncnn import kernels
from moderncnn.kernels import depthwise_conv2d

# --------------------------------------------------------------------------------------------------
# Dispatch and validation (CPU, in process)
# --------------------------------------------------------------------------------------------------


def test_auto_on_cpu_is_f_conv2d_and_differentiable():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 9, 7, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 1, 5, 5, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)
    y = depthwise_conv2d(x, w, b)
    # hand-rolled reference: zero-pad, then sum the k*k shifted slices
    xp = F.pad(x, (2, 2, 2, 2))
    ref = sum(xp[:, :, i : i + 9, j : j + 7] * w[:, 0, i, j].view(1, 3, 1, 1) for i in range(5) for j in range(5))
    ref = ref + b.view(1, 3, 1, 1)
    assert torch.allclose(y, ref, atol=1e-12)
    assert torch.autograd.gradcheck(lambda *t: depthwise_conv2d(*t), (x[:1, :, :5, :4], w, b))


@pytest.mark.parametrize(
    "shape, k, train, cl, bias, dtype, fast, stride",
    [
        ((2, 6, 11, 9), 15, False, False, True, torch.float32, True, 1),  # NCHW input, oneDNN channels_last forward
        ((1, 4, 5, 7), 31, True, False, True, torch.float32, True, 1),  # kernel larger than the image, backward
        ((3, 5, 9, 12), 17, True, True, False, torch.float32, True, 1),  # channels_last in and out, no bias
        ((2, 4, 13, 10), 15, True, False, True, torch.bfloat16, True, 1),
        ((2, 6, 10, 8), 5, True, False, True, torch.float32, True, 1),  # with a backward pass from k=5
        ((2, 6, 10, 8), 7, True, True, True, torch.float32, True, 1),  # ConvNeXt's 7×7, channels_last
        ((2, 6, 10, 8), 13, False, False, True, torch.float32, False, 1),  # inference below k=15: F.conv2d as given
        ((2, 6, 10, 8), 3, True, False, True, torch.float32, False, 1),
        # stride 2 (even and odd sizes: the transposed conv's output padding, the cropped weight gradient)
        ((2, 6, 10, 8), 7, True, False, True, torch.float32, True, 2),
        ((2, 5, 11, 9), 9, True, False, False, torch.float32, True, 2),
        ((1, 4, 5, 6), 15, True, True, True, torch.float32, True, 2),  # kernel larger than the image, channels_last
        ((2, 4, 13, 10), 7, True, False, True, torch.bfloat16, True, 2),
        ((2, 6, 11, 9), 15, False, False, True, torch.float32, True, 2),
        ((2, 6, 10, 8), 5, True, False, True, torch.float32, False, 2),  # stride 2 below k=7: F.conv2d
        ((2, 6, 10, 8), 3, False, False, True, torch.float32, False, 2),
    ],
)
def test_auto_on_cpu_large_kernels(shape, k, train, cl, bias, dtype, fast, stride, monkeypatch):
    """Output and all gradients against float64 F.conv2d; the layout F.conv2d saw; the layout returned."""
    calls = []
    real = F.conv2d
    monkeypatch.setattr(kernels.F, "conv2d", lambda x, *a, **kw: calls.append(x) or real(x, *a, **kw))
    g = torch.Generator().manual_seed(0)
    x64 = torch.randn(*shape, generator=g, dtype=torch.float64)
    w64 = torch.randn(shape[1], 1, k, k, generator=g, dtype=torch.float64) / k
    b64 = torch.randn(shape[1], generator=g, dtype=torch.float64) if bias else None
    mf = torch.channels_last if cl else torch.contiguous_format
    x = x64.to(dtype).contiguous(memory_format=mf).requires_grad_(train)
    w = w64.to(dtype).requires_grad_(train)
    b = b64.to(dtype).requires_grad_(train) if bias else None
    y = depthwise_conv2d(x, w, b, stride=stride)
    assert all(c.is_contiguous(memory_format=torch.channels_last) for c in calls) == (fast or cl)
    assert y.is_contiguous(memory_format=mf) and y.dtype == dtype
    tol = 1e-2 if dtype == torch.bfloat16 else 1e-5
    inputs = [t.requires_grad_(train) for t in (x64, w64, b64) if t is not None]
    ref = real(x64, w64, b64, stride=stride, padding=k // 2, groups=shape[1])
    assert y.shape == ref.shape
    assert rel_err(y.double(), ref) <= tol
    if train:
        dy = torch.randn(y.shape, generator=g, dtype=torch.float64)
        grads = torch.autograd.grad(y, [t for t in (x, w, b) if t is not None], dy.to(dtype))
        refs = torch.autograd.grad(ref, inputs, dy)
        for got, want in zip(grads, refs):
            assert got.dtype == dtype and rel_err(got.double(), want) <= tol
        assert grads[0].is_contiguous(memory_format=mf)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize("cl", [False, True])
def test_cpu_policy_rows(stride, train, cl, monkeypatch):
    """Each row of the CPU table routes exactly from its threshold on, and never the 3×3 kernels of
    MobileNeXt/EfficientNetV2 (PyTorch's own oneDNN path is the fast one there)."""
    from moderncnn.kernels import _dwconv_cpu

    min_k = kernels._CPU_MIN_K[(stride, train, cl)]
    assert 5 <= min_k <= 15
    routed = []
    real_apply, real_same = _dwconv_cpu.DepthwiseConv2dCPU.apply, _dwconv_cpu.same_dwconv
    monkeypatch.setattr(_dwconv_cpu.DepthwiseConv2dCPU, "apply", lambda *a: routed.append("f") or real_apply(*a))
    monkeypatch.setattr(_dwconv_cpu, "same_dwconv", lambda *a, **kw: routed.append("s") or real_same(*a, **kw))
    mf = torch.channels_last if cl else torch.contiguous_format
    for k in sorted({3, min_k - 2, min_k}):
        routed.clear()
        x = torch.randn(1, 3, 9, 9).contiguous(memory_format=mf).requires_grad_(train)
        w = torch.randn(3, 1, k, k, requires_grad=train)
        depthwise_conv2d(x, w, stride=stride)
        # the autograd function's own forward also calls same_dwconv: the first route is the choice
        assert routed[:1] == ([("f" if train else "s")] if k >= min_k else []), (k, min_k)


def test_auto_on_cpu_keeps_channels_last_and_float64_inputs(monkeypatch):
    calls = []
    real = F.conv2d
    monkeypatch.setattr(kernels.F, "conv2d", lambda x, *a, **kw: calls.append(x) or real(x, *a, **kw))
    x = torch.randn(1, 4, 12, 12).contiguous(memory_format=torch.channels_last)
    w = torch.randn(4, 1, 17, 17)
    assert depthwise_conv2d(x, w).is_contiguous(memory_format=torch.channels_last)
    depthwise_conv2d(x.contiguous().double(), w.double())  # oneDNN's float64 CL path is the slow one
    assert calls[1].is_contiguous()
    depthwise_conv2d(x.contiguous(), w, impl="torch")  # an explicit "torch" runs F.conv2d on the input as given
    assert calls[2].is_contiguous()


def test_meta_device_shapes():
    x = torch.empty(2, 8, 14, 10, device="meta")
    w = torch.empty(8, 1, 31, 31, device="meta")
    for impl in ("auto", "torch", "triton"):
        y = depthwise_conv2d(x, w, None, impl=impl)
        assert y.device.type == "meta" and y.shape == (2, 8, 14, 10)


def test_default_impl_switch(monkeypatch):
    old = kernels.get_default_impl()
    try:
        kernels.set_default_impl("torch")
        assert kernels.get_default_impl() == "torch"
        with pytest.raises(ValueError, match="impl must be one of"):
            kernels.set_default_impl("cudnn")
    finally:
        kernels.set_default_impl(old)


@pytest.mark.parametrize(
    "x_shape, w_shape, kwargs, match",
    [
        ((1, 4, 8, 8), (4, 1, 4, 4), {}, "odd kernel"),
        ((1, 4, 8, 8), (4, 2, 3, 3), {}, r"\(C, 1, k, k\)"),
        ((1, 4, 8, 8), (8, 1, 3, 3), {}, r"\(C, 1, k, k\)"),
        ((1, 4, 8, 8), (4, 1, 3, 5), {}, r"\(C, 1, k, k\)"),
        ((4, 8, 8), (4, 1, 3, 3), {}, r"\(N, C, H, W\)"),
        ((1, 4, 8, 8), (4, 1, 3, 3), {"stride": 3}, r"stride 1 \('same' output size\) or 2"),
        ((1, 4, 8, 8), (4, 1, 3, 3), {"impl": "fast"}, "impl must be one of"),
    ],
)
def test_validation_errors(x_shape, w_shape, kwargs, match):
    with pytest.raises(ValueError, match=match):
        depthwise_conv2d(torch.randn(x_shape), torch.randn(w_shape), **kwargs)


def test_bias_shape_error():
    with pytest.raises(ValueError, match="bias of shape"):
        depthwise_conv2d(torch.randn(1, 4, 8, 8), torch.randn(4, 1, 3, 3), torch.randn(3))


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1", reason="interpreter allows CPU tensors")
def test_triton_on_cpu_says_what_to_do():
    with pytest.raises(RuntimeError, match="needs CUDA tensors"):
        depthwise_conv2d(torch.randn(1, 4, 8, 8), torch.randn(4, 1, 3, 3), impl="triton")


def test_auto_table_prefers_triton_for_large_kernels_only():
    # the table must send the RepLKNet training kernel sizes (13..31) to Triton and 3×3 to torch
    for (cl, train, fp32), min_k in kernels._TRITON_MIN_K.items():
        assert 3 < min_k <= (13 if train else 27), (cl, train, fp32)


# --------------------------------------------------------------------------------------------------
# Triton kernels in the interpreter (CPU, one subprocess)
# --------------------------------------------------------------------------------------------------

# (N, C, H, W, k, channels_last, dtype, bias): tiny, non-square, odd sizes, kernels larger than the map
INTERP_CASES = [
    (1, 2, 5, 7, 3, False, "float32", True),
    (2, 3, 9, 6, 13, True, "float32", True),
    (1, 2, 12, 11, 7, False, "float32", False),
    (2, 2, 6, 5, 5, True, "float32", True),
    (1, 3, 7, 12, 13, False, "float32", True),  # k > H
    (1, 2, 5, 5, 9, True, "float32", False),  # k > H and k > W
    (2, 2, 11, 8, 3, True, "float32", True),
    (1, 2, 8, 10, 5, False, "float16", True),
    (1, 2, 6, 9, 7, True, "float16", False),
]

_INTERP_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    os.environ["TRITON_INTERPRET"] = "1"
    import torch, torch.nn.functional as F
    torch.set_num_threads(1)
    from moderncnn.kernels import depthwise_conv2d
    from moderncnn.kernels import _dwconv_triton as K

    def rel(a, b):
        return ((a.double() - b).abs().max() / b.abs().max()).item()

    out = []
    for i, (N, C, H, W, k, cl, dt, has_b) in enumerate(json.loads(sys.argv[1])):
        dtype = getattr(torch, dt)
        K.PAD_INPUT = i % 2 == 0  # both forward paths: zero-padded input / masked clipped window
        g = torch.Generator().manual_seed(i)
        x = torch.randn(N, C, H, W, generator=g).to(dtype)
        w = torch.randn(C, 1, k, k, generator=g).to(dtype)
        b = torch.randn(C, generator=g).to(dtype) if has_b else None
        dy = torch.randn(N, C, H, W, generator=g).to(dtype)
        if cl:
            x, dy = x.contiguous(memory_format=torch.channels_last), dy.contiguous(memory_format=torch.channels_last)
        leaves = [t.detach().requires_grad_() for t in (x, w) + ((b,) if has_b else ())]
        y = depthwise_conv2d(*leaves, impl="triton")
        grads = torch.autograd.grad(y, leaves, dy)
        ref_leaves = [t.detach().double().requires_grad_() for t in leaves]
        yr = F.conv2d(ref_leaves[0], ref_leaves[1], ref_leaves[2] if has_b else None, padding=k // 2, groups=C)
        ref_grads = torch.autograd.grad(yr, ref_leaves, dy.double())
        out.append(dict(
            y=rel(y, yr), grads=[rel(a, r) for a, r in zip(grads, ref_grads)],
            dtype=str(y.dtype), cl=y.is_contiguous(memory_format=torch.channels_last) and not y.is_contiguous(),
        ))
    print("RESULT" + json.dumps(out))
    """
)


@pytest.fixture(scope="module")
def interp_results():
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run(
        [sys.executable, "-c", _INTERP_SCRIPT, json.dumps(INTERP_CASES)],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT"))
    return json.loads(line[len("RESULT"):])


@pytest.mark.parametrize("case", range(len(INTERP_CASES)), ids=[str(c) for c in INTERP_CASES])
def test_triton_kernels_in_interpreter(interp_results, case):
    N, C, H, W, k, cl, dt, has_b = INTERP_CASES[case]
    r = interp_results[case]
    tol = 1e-5 if dt == "float32" else 2e-3  # float16 inputs round to 2^-11; sums stay float32
    assert r["dtype"] == f"torch.{dt}"
    assert r["cl"] == cl, "output must keep the input's memory format"
    assert r["y"] <= tol, r
    assert len(r["grads"]) == (3 if has_b else 2)
    for name, e in zip(("input", "weight", "bias"), r["grads"]):
        assert e <= tol, (name, r)


# --------------------------------------------------------------------------------------------------
# GPU: every benchmarked shape (benchmarks/large_kernel_dwconv.py), float32 and bfloat16
# --------------------------------------------------------------------------------------------------

GPU_SHAPES = [(C, H, k) for C, H in [(128, 56), (256, 28), (512, 14), (1024, 7)] for k in (3, 5, 7, 13, 27, 31)]


def _gpu_check(B, C, H, W, k, dtype, channels_last, seed=0):
    g = torch.Generator().manual_seed(seed)
    dev = "cuda"
    x = torch.randn(B, C, H, W, generator=g).to(dtype).to(dev)
    w = (torch.randn(C, 1, k, k, generator=g) / k).to(dtype).to(dev)
    b = torch.randn(C, generator=g).to(dtype).to(dev)
    dy = torch.randn(B, C, H, W, generator=g).to(dtype).to(dev)
    if channels_last:
        x, dy = x.contiguous(memory_format=torch.channels_last), dy.contiguous(memory_format=torch.channels_last)
    leaves = [t.clone().requires_grad_() for t in (x, w, b)]
    y = depthwise_conv2d(*leaves, impl="triton")
    grads = torch.autograd.grad(y, leaves, dy)
    ref = [t.detach().double().requires_grad_() for t in (x, w, b)]
    yr = F.conv2d(ref[0], ref[1], ref[2], padding=k // 2, groups=C)
    ref_grads = torch.autograd.grad(yr, ref, dy.double())
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    for name, a, r in zip(("y", "dx", "dw", "db"), (y,) + grads, (yr,) + ref_grads):
        assert a.dtype == dtype and a.shape == r.shape
        err = ((a.double() - r).abs().max() / r.abs().max()).item()
        assert err <= tol, (name, err)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("C, H, k", GPU_SHAPES, ids=[f"{C}@{H}-k{k}" for C, H, k in GPU_SHAPES])
def test_gpu_benchmark_shapes(C, H, k, dtype):
    _gpu_check(64, C, H, H, k, dtype, channels_last=(k % 4 == 1))  # both layouts across the k's


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize(
    "B, C, H, W, k, cl",
    [(3, 5, 17, 9, 31, True), (1, 7, 100, 70, 13, False), (2, 3, 5, 130, 63, True), (5, 16, 33, 47, 1, False)],
)
def test_gpu_odd_shapes(B, C, H, W, k, cl, dtype):
    _gpu_check(B, C, H, W, k, dtype, cl, seed=B + k)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_autocast_matches_f_conv2d():
    x = torch.randn(4, 32, 28, 28, device="cuda", requires_grad=True)
    w = torch.randn(32, 1, 27, 27, device="cuda", requires_grad=True)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y = depthwise_conv2d(x, w, impl="triton")
        yr = F.conv2d(x, w, padding=13, groups=32)
    assert y.dtype == yr.dtype == torch.bfloat16
    assert ((y.float() - yr.float()).abs().max() / yr.float().abs().max()).item() < 1e-2
    y.float().sum().backward()
    assert w.grad is not None and w.grad.dtype == torch.float32


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_unpadded_forward_path(dtype, monkeypatch):
    from moderncnn.kernels import _dwconv_triton as K

    monkeypatch.setattr(K, "PAD_INPUT", False)  # the masked, clipped-window loads
    _gpu_check(8, 64, 56, 56, 31, dtype, channels_last=False)
    _gpu_check(8, 64, 28, 28, 7, dtype, channels_last=True)


# --------------------------------------------------------------------------------------------------
# Whole models on the CPU: the dispatch and channels_last change rounding only
# --------------------------------------------------------------------------------------------------

FAMILY_CASES = [
    ("convnext_tiny", dict(depths=(1, 1, 1, 1))),  # 7×7 through the oneDNN-forward path when training
    ("mobilenext_100", {}),
    ("efficientnetv2_b0", {}),
    ("replknet_31b", dict(layers=(1, 1, 1, 1), channels=(16, 32, 64, 128))),
    ("repvgg_a0", {}),
]


@pytest.mark.parametrize("name, kw", FAMILY_CASES, ids=[c[0] for c in FAMILY_CASES])
def test_models_auto_vs_float64(name, kw):
    """Logits and every parameter gradient of ``impl="auto"`` (channels_last after the stem, the CPU table,
    its backward paths: gradients are taken) and of plain PyTorch (``set_default_impl("torch")``: F.conv2d,
    NCHW) against the float64 model, float32, eval mode (BN on calibrated running statistics, so no
    gradient is a cancellation that is ~0 in exact arithmetic); and the layout after the stem."""
    import copy

    from conftest import randomize_bn
    from moderncnn import create_model

    torch.manual_seed(0)
    model = create_model(name, **kw)
    randomize_bn(model, input_size=64)
    ref_model = copy.deepcopy(model).double()
    x = torch.randn(2, 3, 64, 64)
    seen = []
    hook = model.stages[0].register_forward_pre_hook(lambda m, args: seen.append(args[0]))  # after the stem
    old = kernels.get_default_impl()
    try:
        kernels.set_default_impl("torch")
        y_ref = ref_model(x.double())
        y_ref.square().mean().backward()
        errs = {}
        for impl in ("torch", "auto"):
            kernels.set_default_impl(impl)
            model.zero_grad()
            y = model(x)
            y.square().mean().backward()
            grad_errs = [rel_err(p.grad.double(), q.grad) for p, q in zip(model.parameters(), ref_model.parameters())
                         if q.grad is not None]
            errs[impl] = (rel_err(y.double(), y_ref), max(grad_errs))
    finally:
        kernels.set_default_impl(old)
        hook.remove()
    h = seen[-1]
    assert (h.is_contiguous(memory_format=torch.channels_last) and not h.is_contiguous()) == (name != "repvgg_a0")
    for impl, (out_err, grad_err) in errs.items():
        assert out_err <= 1e-4 and grad_err <= 5e-3, (impl, errs)
    # and no worse than PyTorch's own float32 rounding by more than a small factor
    assert errs["auto"][0] <= 10 * errs["torch"][0] + 1e-6 and errs["auto"][1] <= 10 * errs["torch"][1] + 1e-5, errs
