"""Optimizers: TensorFlow-style RMSProp, weight-decay parameter groups, and a factory.

EfficientNetV2 (Tan & Le, ICML 2021, §5.1 and the released ``google/automl/efficientnetv2`` code) trains with
RMSProp (decay 0.9, momentum 0.9, epsilon 1e-3) as implemented by TensorFlow, whose update differs from
``torch.optim.RMSprop`` in three ways that matter at epsilon 1e-3 (see :class:`RMSpropTF`). Weight decay there is
an L2 loss term on conv/dense kernels only; :func:`param_groups` reproduces the exclusion list.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch import nn

__all__ = ["OPTIMIZERS", "RMSpropTF", "create_optimizer", "default_lr_base_scale", "layer_ids", "param_groups",
           "resolve_lr", "scale_lr"]

# timm's names: the first five were here before issue 12; lamb, lars, adamp are training.adaptive, the rest torch's
OPTIMIZERS = ("sgd", "momentum", "rmsproptf", "adamw", "adam", "lamb", "lars", "adamp", "nadam", "radam", "rmsprop",
              "adagrad")

# Normalization layers whose affine parameters never get weight decay, whatever their shape.
_NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,  # BatchNorm*, InstanceNorm*, SyncBatchNorm
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
)


class RMSpropTF(torch.optim.Optimizer):
    """RMSProp with TensorFlow semantics (``tf.compat.v1.train.RMSPropOptimizer`` / Keras ``RMSprop``).

    For each parameter ``p`` with gradient ``g`` (after coupled L2: ``g += weight_decay * p``)::

        ms  = alpha * ms + (1 - alpha) * g**2          # ms starts at ONE, not zero
        mom = momentum * mom + lr * g / sqrt(ms + eps)  # eps INSIDE the sqrt; lr inside the buffer
        p  -= mom

    Differences from ``torch.optim.RMSprop``: the square-average slot is initialised to 1 (so the first steps are
    not huge), epsilon sits inside the square root (1e-3 inside a sqrt is ~0.03 outside it), and the learning
    rate is folded into the momentum buffer, so a learning-rate change acts gradually, as in TF. Defaults follow
    EfficientNetV2's ``hparams.py``: ``alpha`` (TF "decay"/"rho") 0.9, momentum 0.9, eps 1e-3.

    Weight decay is the coupled L2 of the official code (``wd * sum(||w||^2) / 2`` added to the loss gives
    gradient ``wd * w``); use :func:`param_groups` to exclude norms, biases and scales.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict],
        lr: float = 1e-2,
        alpha: float = 0.9,
        eps: float = 1e-3,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        centered: bool = False,
    ) -> None:
        if lr < 0.0:
            raise ValueError(f"RMSpropTF: learning rate must be >= 0, got {lr}")
        if not 0.0 <= alpha < 1.0:
            raise ValueError(f"RMSpropTF: alpha (TF decay) must be in [0, 1), got {alpha}")
        if eps < 0.0 or momentum < 0.0 or weight_decay < 0.0:
            raise ValueError(
                f"RMSpropTF: eps, momentum and weight_decay must be >= 0, got {eps}, {momentum}, {weight_decay}"
            )
        defaults = dict(lr=lr, alpha=alpha, eps=eps, momentum=momentum, weight_decay=weight_decay, centered=centered)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, alpha, eps = group["lr"], group["alpha"], group["eps"]
            momentum, weight_decay = group["momentum"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("RMSpropTF does not support sparse gradients")
                grad = p.grad
                if weight_decay != 0.0:
                    grad = grad.add(p, alpha=weight_decay)
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["square_avg"] = torch.ones_like(p)  # TF initialises the ms slot to 1
                    if momentum > 0.0:
                        state["momentum_buffer"] = torch.zeros_like(p)
                    if group["centered"]:
                        state["grad_avg"] = torch.zeros_like(p)
                state["step"] += 1
                square_avg = state["square_avg"]
                # ms += (1 - alpha) * (g^2 - ms)  ==  alpha * ms + (1 - alpha) * g^2
                square_avg.mul_(alpha).addcmul_(grad, grad, value=1.0 - alpha)
                if group["centered"]:
                    grad_avg = state["grad_avg"]
                    grad_avg.mul_(alpha).add_(grad, alpha=1.0 - alpha)
                    denom = square_avg.addcmul(grad_avg, grad_avg, value=-1.0).add_(eps).sqrt_()
                else:
                    denom = square_avg.add(eps).sqrt_()
                if momentum > 0.0:
                    buf = state["momentum_buffer"]
                    buf.mul_(momentum).addcdiv_(grad, denom, value=lr)
                    p.sub_(buf)
                else:
                    p.addcdiv_(grad, denom, value=-lr)
        return loss


def _no_decay_names(model: nn.Module) -> set[str]:
    """Full names of parameters that should not be decayed: any normalization layer's parameters, every bias,
    layer-scale ``gamma``, every parameter with fewer than 2 dims, and whatever ``model.no_weight_decay()``
    (timm's convention) lists."""
    names: set[str] = set()
    for mod_name, module in model.named_modules():
        prefix = f"{mod_name}." if mod_name else ""
        is_norm = isinstance(module, _NORM_TYPES)
        for p_name, p in module.named_parameters(recurse=False):
            if is_norm or p.ndim <= 1 or p_name in ("bias", "gamma"):
                names.add(prefix + p_name)
    hook = getattr(model, "no_weight_decay", None)
    if callable(hook):
        listed = set(hook())
        for name, _ in model.named_parameters():
            if name in listed or any(name.startswith(f"{x}.") for x in listed):
                names.add(name)
    return names


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Split ``model``'s trainable parameters into a decayed and a non-decayed group.

    Matches the official EfficientNetV2 exclusion ``weight_decay_exclude='.*(bias|gamma|beta).*'`` and timm's
    ``filter_bias_and_bn``: no decay on normalization parameters, biases, layer scales (``gamma``) and any 1-D
    parameter. Returns ``[{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}]``;
    an empty group is left out. Each group also carries ``"names"`` for inspection (optimizers ignore it).
    """
    skip = _no_decay_names(model)
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    decay_names: list[str] = []
    no_decay_names: list[str] = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if weight_decay == 0.0 or name in skip:
            no_decay.append(p)
            no_decay_names.append(name)
        else:
            decay.append(p)
            decay_names.append(name)
    groups = []
    if decay:
        groups.append({"params": decay, "weight_decay": weight_decay, "names": decay_names})
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0, "names": no_decay_names})
    return groups


def layer_ids(model: nn.Module) -> dict[str, int]:
    """Layer index of every parameter for layer-wise lr decay, with timm's semantics of a ``group_matcher``
    (``timm.models.group_parameters(..., reverse=True)``; docs/training.md, "Layer-wise lr decay").

    Each parameter name gets a sort key from the first rule that matches it: the rule's position in the
    matcher dict, then the numbers its regex captures, then the rule's suffix (``stem`` rules have none);
    unmatched names (the classifier) sort last. Distinct keys in sorted order are consecutive layers, except
    that a key ending in 99999 (timm's "same group as the previous one") joins the layer before it.
    """
    import re

    rules: list[tuple[re.Pattern, tuple[float, ...], tuple[float, ...]]] = []
    for position, spec in enumerate(model.group_matcher(coarse=False).values()):
        if spec is None:
            continue
        for pattern, suffix in (spec if isinstance(spec, (list, tuple)) else [(spec, None)]):
            rules.append((re.compile(pattern), (float(position),), tuple(map(float, suffix or ()))))

    def key(name: str) -> tuple[float, ...]:
        for pattern, prefix, suffix in rules:
            m = pattern.match(name)
            if m:
                return prefix + tuple(float(x) for x in m.groups() if x is not None) + suffix
        return (math.inf,)

    keys = {name: key(name) for name, _ in model.named_parameters()}
    layer_of_key: dict[tuple[float, ...], int] = {}
    layer = -1
    for k in sorted(set(keys.values())):
        if layer < 0 or k[-1] != 99999.0:
            layer += 1
        layer_of_key[k] = layer
    return {name: layer_of_key[k] for name, k in keys.items()}


def layer_decay_groups(model: nn.Module, weight_decay: float, layer_decay: float) -> list[dict]:
    """:func:`param_groups` split further by layer (:func:`layer_ids`): layer ``i`` of ``n`` carries
    ``lr_scale = layer_decay ** (n - 1 - i)``, so the classifier trains at the full rate and the stem at the
    smallest (BEiT, Bao et al., ICLR 2022, §2.5; ConvNeXt fine-tuning, Liu et al., CVPR 2022, Table 6)."""
    ids = layer_ids(model)
    top = max(ids.values(), default=0)
    groups: dict[tuple[int, bool], dict] = {}
    for base in param_groups(model, weight_decay):
        for name, p in zip(base["names"], base["params"]):
            layer, decayed = ids.get(name, top), base["weight_decay"] > 0
            g = groups.setdefault((layer, decayed), {"params": [], "names": [], "weight_decay": base["weight_decay"],
                                                     "lr_scale": layer_decay ** (top - layer)})
            g["params"].append(p)
            g["names"].append(name)
    return [groups[k] for k in sorted(groups)]


def default_lr_base_scale(opt: str) -> str:
    """timm's default for ``--lr-base-scale ''``: ``sqrt`` for optimizers whose name contains ``ada`` (adam,
    adamw, adamp, nadam, radam, adagrad) or ``lamb``, ``linear`` for the rest (sgd, momentum, lars, rmsprop)."""
    name = opt.lower()
    return "sqrt" if "ada" in name or "lamb" in name else "linear"


def resolve_lr(lr_base: float, global_batch: int, lr_base_size: int, opt: str, lr_base_scale: str = "") -> float:
    """The learning rate when ``--lr`` is not given: ``lr_base * ratio`` with ``ratio = global_batch /
    lr_base_size``, or its square root (Krizhevsky, 2014, "One weird trick", for adaptive optimizers; timm's
    ``--lr-base-scale``); the default follows :func:`default_lr_base_scale`."""
    ratio = scale_lr(1.0, global_batch, lr_base_size)  # the linear rule's factor
    return lr_base * (math.sqrt(ratio) if (lr_base_scale or default_lr_base_scale(opt)) == "sqrt" else ratio)


def create_optimizer(
    model: nn.Module,
    opt: str,
    lr: float,
    weight_decay: float = 0.0,
    momentum: float = 0.9,
    eps: float | None = None,
    betas: tuple[float, float] | None = None,
    layer_decay: float | None = None,
) -> torch.optim.Optimizer:
    """Build an optimizer over :func:`param_groups` (no decay on norms, biases, scales).

    ``opt`` is one of :data:`OPTIMIZERS`:

    - ``sgd``: SGD with Nesterov momentum (timm's meaning of ``--opt sgd``), coupled weight decay.
    - ``momentum``: SGD with plain (heavy-ball) momentum.
    - ``rmsproptf``: :class:`RMSpropTF`, alpha 0.9, eps 1e-3 by default (EfficientNetV2).
    - ``adamw``: decoupled weight decay (ConvNeXt, RepLKNet recipes), eps 1e-8 by default.
    - ``adam``: Adam with coupled L2.
    - ``lamb``, ``lars``, ``adamp``: :mod:`training.adaptive`, with timm's defaults (LAMB eps 1e-6 and global
      gradient norm 1.0; LARS trust coefficient 0.001; AdamP nesterov, wd_ratio 0.01).
    - ``nadam``, ``radam``, ``rmsprop``, ``adagrad``: torch's, with timm's defaults (RMSprop alpha 0.9 and
      ``momentum``; Adagrad eps 1e-8).

    ``layer_decay`` splits the groups by layer with an ``lr_scale`` each (:func:`layer_decay_groups`), which
    the schedule multiplies in.
    """
    name = opt.lower().replace("-", "").replace("_", "")
    if name not in OPTIMIZERS:
        raise ValueError(f"Unknown optimizer {opt!r}; expected one of {', '.join(OPTIMIZERS)}.")
    groups = param_groups(model, weight_decay) if layer_decay is None else layer_decay_groups(
        model, weight_decay, layer_decay)
    for g in groups:
        g.pop("names")  # torch keeps unknown keys in state_dict; keep checkpoints small
        g["lr"] = lr * g.get("lr_scale", 1.0)
    if name in _ISSUE12:
        return _ISSUE12[name](groups, lr, weight_decay, momentum, eps, betas)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=momentum > 0, weight_decay=weight_decay)
    if name == "momentum":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=False, weight_decay=weight_decay)
    if name == "rmsproptf":
        return RMSpropTF(
            groups, lr=lr, alpha=0.9, eps=1e-3 if eps is None else eps, momentum=momentum, weight_decay=weight_decay
        )
    adam_kw = dict(lr=lr, eps=1e-8 if eps is None else eps, betas=betas or (0.9, 0.999), weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(groups, **adam_kw)
    return torch.optim.Adam(groups, **adam_kw)


def _issue12_optimizers() -> dict[str, Callable[..., torch.optim.Optimizer]]:
    """Builders ``(groups, lr, weight_decay, momentum, eps, betas)`` of the optimizers added by issue 12, with
    timm's defaults where ``eps``/``betas`` are None."""
    from .adaptive import AdamP, Lamb, Lars

    def kw(eps, betas, default_eps=1e-8):
        return dict(eps=default_eps if eps is None else eps, betas=betas or (0.9, 0.999))

    return {
        "lamb": lambda g, lr, wd, mom, eps, betas: Lamb(g, lr=lr, weight_decay=wd, **kw(eps, betas, 1e-6)),
        "lars": lambda g, lr, wd, mom, eps, betas: Lars(g, lr=lr, momentum=mom, weight_decay=wd,
                                                         eps=1e-8 if eps is None else eps),
        "adamp": lambda g, lr, wd, mom, eps, betas: AdamP(g, lr=lr, weight_decay=wd, wd_ratio=0.01, nesterov=True,
                                                           **kw(eps, betas)),
        "nadam": lambda g, lr, wd, mom, eps, betas: torch.optim.NAdam(g, lr=lr, weight_decay=wd, **kw(eps, betas)),
        "radam": lambda g, lr, wd, mom, eps, betas: torch.optim.RAdam(g, lr=lr, weight_decay=wd, **kw(eps, betas)),
        "rmsprop": lambda g, lr, wd, mom, eps, betas: torch.optim.RMSprop(
            g, lr=lr, alpha=0.9, momentum=mom, weight_decay=wd, eps=1e-8 if eps is None else eps),
        "adagrad": lambda g, lr, wd, mom, eps, betas: torch.optim.Adagrad(g, lr=lr, weight_decay=wd,
                                                                           eps=1e-8 if eps is None else eps),
    }


_ISSUE12 = _issue12_optimizers()


def scale_lr(lr: float, batch_size: int, base_batch_size: int) -> float:
    """Linear scaling rule (Goyal et al., 2017): ``lr * batch_size / base_batch_size``.

    EfficientNetV2 quotes 0.016 per 256 images, i.e. 0.256 at batch 4096.
    """
    if batch_size <= 0 or base_batch_size <= 0:
        raise ValueError(f"batch sizes must be positive, got {batch_size} and {base_batch_size}")
    return lr * batch_size / base_batch_size
