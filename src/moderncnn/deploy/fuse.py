"""Deploy form of any model: re-parameterize, fold every BatchNorm that folds exactly, drop dropout.

Structural re-parameterization (RepVGG, Ding et al., CVPR 2021, §3.3) merges multi-branch blocks;
what is left is conv -> BN pairs (and, in RepLKNet, Ding et al., CVPR 2022, §3, pre-norm BNs that feed
a 1×1 conv). In eval mode a BN is a per-channel affine map ``y = x·t + s`` with ``t = γ/√(σ²+ε)`` and
``s = β − μ·t``, so it folds into a neighbouring convolution:

* **conv -> BN** (always exact): ``W' = W·t[o]``, ``b' = (b − μ)·t + β``. Grouped, depthwise, biased and
  TF-"same" conv subclasses alike, since only the output channels are scaled.
* **BN -> conv** (exact only when the conv has **no zero padding**): ``W'[o, j] = W[o, j]·t[c(o, j)]``,
  ``b' = b + Σ W[o, j, ·]·s[c(o, j)]``. With zero padding the padded border would see 0 where the
  unfused model sees ``s``, so such BNs are left alone (RepLKNet's pre-BN feeds a 1×1, padding-0 conv).

Which module feeds which is read from the forward pass itself, not guessed from attribute names: one
forward at a tiny input is recorded with a ``TorchFunctionMode`` (every torch op and the tensors it
reads) plus module hooks (which module produced which tensor). A pair is folded only when the
intermediate tensor has exactly one reader — the other module of the pair — and is not a model output,
and when each module runs exactly once. So a conv whose output also feeds a shortcut, a shared conv, a
BN subclass with extra behaviour or a padded conv after a BN is never folded. No torch.fx, so models
with data-dependent Python (features-only lists, input checks) are handled as they run.

ConvNeXt's layer scale (Liu et al., CVPR 2022, §3: ``x·γ`` after the last 1×1) folds into the module
that produced ``x`` the same way (``W' = γ·W``, ``b' = γ·b``, or a norm's affine weight and bias) for
blocks that name it with ``layer_scale_target()``; this saves one full elementwise pass per block in
eager mode.
"""

from __future__ import annotations

import copy
from collections import defaultdict
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

from ..layers.drop import DropPath
from ..layers.reparam import bn_affine, fold_bn, reparameterize_model

_BN_FORWARDS = {nn.modules.batchnorm._BatchNorm.forward, nn.SyncBatchNorm.forward}
_PLAIN_CONV_FORWARDS = {nn.Conv1d.forward, nn.Conv2d.forward, nn.Conv3d.forward}


@dataclass
class FuseReport:
    """What :func:`fuse` did: counts, and the BatchNorms it had to leave (with the reason)."""

    reparameterized: int = 0  # blocks whose reparameterize() ran (0 when already fused)
    folded_into_previous_conv: int = 0  # conv -> BN
    folded_into_next_conv: int = 0  # BN -> unpadded conv
    folded_layer_scales: int = 0  # layer-scale gamma -> the module before it
    dropped: int = 0  # Dropout / DropPath replaced by Identity
    remaining: dict[str, str] = field(default_factory=dict)  # BN name -> why it stays

    @property
    def folded(self) -> int:
        return self.folded_into_previous_conv + self.folded_into_next_conv

    def __str__(self) -> str:
        lines = [
            f"folded {self.folded} BatchNorm(s) ({self.folded_into_previous_conv} into the conv before, "
            f"{self.folded_into_next_conv} into the conv after), {len(self.remaining)} remain; "
            f"{self.folded_layer_scales} layer scale(s) folded, {self.dropped} dropout/drop-path removed"
        ]
        lines += [f"  kept {name}: {why}" for name, why in self.remaining.items()]
        return "\n".join(lines)


def count_batchnorms(model: nn.Module) -> int:
    """Number of BatchNorm modules in ``model`` (each shared module counted once)."""
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def is_fused(model: nn.Module) -> bool:
    """True if ``model`` came out of :func:`fuse` and is still in eval mode."""
    return bool(getattr(model, "is_fused", False)) and not model.training


# -- the forward recording ---------------------------------------------------------------------------
class _Recorder(TorchFunctionMode):
    """Records, for every tensor, which module was running when a torch op read it."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[nn.Module] = []
        self.readers: dict[int, list[nn.Module | None]] = defaultdict(list)
        self.keep: list[object] = []  # holds every tensor so ids stay unique while recording

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        owner = self.stack[-1] if self.stack else None
        for t in tree_leaves((args, kwargs)):
            if isinstance(t, torch.Tensor):
                self.readers[id(t)].append(owner)
        out = func(*args, **kwargs)
        self.keep.append(out)
        return out


@dataclass
class _Call:
    count: int = 0
    input: torch.Tensor | None = None
    output: torch.Tensor | None = None


def _record(model: nn.Module, example: torch.Tensor) -> tuple[dict[nn.Module, _Call], _Recorder, set[int]]:
    rec = _Recorder()
    calls: dict[nn.Module, _Call] = defaultdict(_Call)

    def pre(mod, args):
        rec.stack.append(mod)
        call = calls[mod]
        call.count += 1
        call.input = args[0] if args and isinstance(args[0], torch.Tensor) else None

    def post(mod, args, out):
        rec.stack.pop()
        calls[mod].output = out if isinstance(out, torch.Tensor) else None

    handles = []
    for m in model.modules():
        handles += [m.register_forward_pre_hook(pre), m.register_forward_hook(post)]
    try:
        with torch.no_grad(), rec:
            out = model(example)
    finally:
        for h in handles:
            h.remove()
    outputs = {id(t) for t in tree_leaves(out) if isinstance(t, torch.Tensor)}
    return calls, rec, outputs


def _example_input(model: nn.Module) -> torch.Tensor:
    p = next(iter(model.parameters()), None)
    if p is None:
        raise ValueError("fuse: the model has no parameters, so there is nothing to fold")
    in_chans = getattr(model, "in_chans", None)
    if in_chans is None:
        first_conv = next((m for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd)), None)
        if first_conv is None:
            raise ValueError("fuse: cannot guess the input shape of this model; pass example_input=")
        in_chans = first_conv.in_channels
    size = max(32, int(getattr(model, "min_input_size", 32)))
    return torch.randn(1, in_chans, size, size, dtype=p.dtype, device=p.device)


# -- folding rules -----------------------------------------------------------------------------------
def _foldable_bn(bn: nn.Module) -> str | None:
    """None if ``bn`` is a plain BatchNorm with running statistics, else why it is not foldable."""
    if not isinstance(bn, nn.modules.batchnorm._BatchNorm):
        return "not a BatchNorm"
    if type(bn).forward not in _BN_FORWARDS:
        return f"{type(bn).__name__} overrides forward (it may do more than normalize)"
    if not bn.track_running_stats or bn.running_mean is None:
        return "no running statistics (normalizes with batch statistics even in eval mode)"
    return None


def _is_conv(m: nn.Module) -> bool:
    return isinstance(m, nn.modules.conv._ConvNd) and not m.transposed


def _set_weight_bias(conv: nn.modules.conv._ConvNd, w: torch.Tensor, b: torch.Tensor) -> None:
    conv.weight = nn.Parameter(w.to(conv.weight.dtype), requires_grad=conv.weight.requires_grad)
    conv.bias = nn.Parameter(b.to(conv.weight.dtype), requires_grad=conv.weight.requires_grad)


@torch.no_grad()
def _fold_into_previous(conv: nn.modules.conv._ConvNd, bn: nn.modules.batchnorm._BatchNorm) -> None:
    _set_weight_bias(conv, *fold_bn(conv.weight, bn, conv.bias))


@torch.no_grad()
def _fold_into_next(bn: nn.modules.batchnorm._BatchNorm, conv: nn.modules.conv._ConvNd) -> None:
    t, s = bn_affine(bn)
    g = conv.groups
    out_c, in_per_group = conv.weight.shape[:2]
    k = conv.weight.shape[2:]
    # (O, I/g, *k) -> (g, O/g, I/g, *k): input channel of w[o, j] is group(o)·I/g + j
    w = conv.weight.reshape(g, out_c // g, in_per_group, *k)
    t_g = t.reshape(g, 1, in_per_group, *([1] * len(k)))
    s_g = s.reshape(g, 1, in_per_group, *([1] * len(k)))
    shift = (w * s_g).sum(dim=tuple(range(2, w.ndim))).reshape(out_c)
    b = shift if conv.bias is None else conv.bias + shift
    _set_weight_bias(conv, (w * t_g).reshape(conv.weight.shape), b)


def _zero_padding(conv: nn.modules.conv._ConvNd) -> bool:
    if isinstance(conv.padding, str):
        return conv.padding == "valid" or all(k == 1 for k in conv.kernel_size)
    return all(p == 0 for p in conv.padding)


def _single_reader(tensor: torch.Tensor | None, reader: nn.Module, rec: _Recorder, outputs: set[int]) -> bool:
    if tensor is None or id(tensor) in outputs:
        return False
    readers = rec.readers.get(id(tensor), [])
    return bool(readers) and all(r is reader for r in readers)


def _paths(model: nn.Module) -> dict[int, list[str]]:
    paths: dict[int, list[str]] = defaultdict(list)
    for name, m in model.named_modules(remove_duplicate=False):
        if name:
            paths[id(m)].append(name)
    return paths


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    if isinstance(parent, (nn.Sequential, nn.ModuleList)) and attr.isdigit():
        parent[int(attr)] = new
    else:
        setattr(parent, attr, new)


def _fold_batchnorms(model: nn.Module, example: torch.Tensor, report: FuseReport) -> None:
    calls, rec, outputs = _record(model, example)
    producer = {id(c.output): m for m, c in calls.items() if c.output is not None and _is_conv(m)}
    consumer = {id(c.input): m for m, c in calls.items() if c.input is not None and _is_conv(m)}
    folded: list[nn.Module] = []
    pending_next: list[tuple[nn.Module, nn.Module]] = []
    names = {id(m): n for n, m in model.named_modules()}
    for bn in (m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)):
        name = names[id(bn)]
        why = _foldable_bn(bn)
        call = calls.get(bn)
        if why is None and (call is None or call.count != 1):
            why = "not run by the forward pass" if call is None else f"runs {call.count} times per forward"
        if why is not None:
            report.remaining[name] = why
            continue
        conv = producer.get(id(call.input))
        if (
            conv is not None
            and calls[conv].count == 1
            and conv.out_channels == bn.num_features
            and _single_reader(call.input, bn, rec, outputs)
        ):
            _fold_into_previous(conv, bn)
            report.folded_into_previous_conv += 1
            folded.append(bn)
            continue
        conv = consumer.get(id(call.output))
        if conv is None:
            report.remaining[name] = "its input is not a conv output read only by it, and no conv reads its output"
        elif type(conv).forward not in _PLAIN_CONV_FORWARDS or not _zero_padding(conv):
            report.remaining[name] = "the next conv pads its input, so folding would change the border"
        elif calls[conv].count != 1 or conv.in_channels != bn.num_features:
            report.remaining[name] = "the next conv is shared or does not read exactly these channels"
        elif not _single_reader(call.output, conv, rec, outputs):
            report.remaining[name] = "its output is also read elsewhere (shortcut or model output)"
        else:
            pending_next.append((bn, conv))
    # into-next folds read the conv weights after any into-previous fold of the same conv
    for bn, conv in pending_next:
        _fold_into_next(bn, conv)
        report.folded_into_next_conv += 1
        folded.append(bn)
    paths = _paths(model)
    for bn in folded:
        for path in paths[id(bn)]:
            _replace(model, path, nn.Identity())


@torch.no_grad()
def _scale_output_channels(m: nn.Module, gamma: torch.Tensor) -> bool:
    """Make ``m(x)·γ`` (γ per output channel) a property of ``m`` itself; False if ``m`` cannot absorb it.

    A linear layer or (non-transposed, any groups) convolution scales its weight rows and bias; an affine
    norm (BatchNorm, channels-first LayerNorm, GroupNorm) scales its weight and bias.
    """
    w, b = getattr(m, "weight", None), getattr(m, "bias", None)
    linear = isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d))
    norm = isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm))
    if not (linear or norm) or not isinstance(w, nn.Parameter) or w.shape[0] != gamma.numel():
        return False
    if norm and w.ndim != 1:  # a LayerNorm over more than the channel dimension
        return False
    m.weight = nn.Parameter(w * gamma.reshape(-1, *([1] * (w.ndim - 1))))
    if b is not None:
        m.bias = nn.Parameter(b * gamma)
    return True


def _fold_layer_scales(model: nn.Module) -> int:
    """Layer scale ``y·γ`` folds into the module that produced ``y`` (ConvNeXt: the last 1×1 of the block).

    Blocks opt in with ``layer_scale_target()``, the module whose output channels γ multiplies; they skip
    the multiply once ``gamma`` is None.
    """
    n = 0
    for m in model.modules():
        gamma = getattr(m, "gamma", None)
        if isinstance(gamma, nn.Parameter) and hasattr(m, "layer_scale_target"):
            if _scale_output_channels(m.layer_scale_target(), gamma.detach()):
                m.gamma = None
                n += 1
    return n


def _drop_dropout(model: nn.Module) -> int:
    drops = [
        name
        for name, m in model.named_modules(remove_duplicate=False)
        if name and isinstance(m, (nn.modules.dropout._DropoutNd, DropPath))
    ]
    for name in drops:
        _replace(model, name, nn.Identity())
    return len(drops)


def fuse(
    model: nn.Module,
    inplace: bool = False,
    *,
    report: bool = False,
    example_input: torch.Tensor | None = None,
) -> nn.Module | tuple[nn.Module, FuseReport]:
    """The deploy form of ``model``: same outputs in eval mode, fewer layers.

    Runs ``reparameterize()`` on every Rep block, folds every BatchNorm that folds exactly into its
    neighbouring conv (see the module docstring for the conditions), folds ConvNeXt layer scales,
    and replaces Dropout/DropPath with Identity. The result is in eval mode and has ``is_fused=True``
    and ``fuse_report`` (a :class:`FuseReport`); with ``report=True`` the report is also returned.
    ``example_input`` is the batch used to record the forward pass (default: one random image at the
    model's minimum input size). Fusing a fused model changes nothing.
    """
    if not inplace:
        model = copy.deepcopy(model)
    model.eval()
    rep = FuseReport()
    rep.reparameterized = sum(
        1 for m in model.modules() if hasattr(m, "reparameterize") and getattr(m, "reparam_conv", 0) is None
    )
    reparameterize_model(model, inplace=True)
    rep.dropped = _drop_dropout(model)
    rep.folded_layer_scales = _fold_layer_scales(model)
    if count_batchnorms(model):
        _fold_batchnorms(model, example_input if example_input is not None else _example_input(model), rep)
    model.is_fused = True
    model.fuse_report = rep
    return (model, rep) if report else model


__all__ = ["FuseReport", "count_batchnorms", "fuse", "is_fused"]
