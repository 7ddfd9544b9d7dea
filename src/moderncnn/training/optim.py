"""Optimizers: TensorFlow-style RMSProp, weight-decay parameter groups, and a factory.

EfficientNetV2 (Tan & Le, ICML 2021, §5.1 and the released ``google/automl/efficientnetv2`` code) trains with
RMSProp (decay 0.9, momentum 0.9, epsilon 1e-3) as implemented by TensorFlow, whose update differs from
``torch.optim.RMSprop`` in three ways that matter at epsilon 1e-3 (see :class:`RMSpropTF`). Weight decay there is
an L2 loss term on conv/dense kernels only; :func:`param_groups` reproduces the exclusion list.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

__all__ = ["OPTIMIZERS", "RMSpropTF", "create_optimizer", "param_groups", "scale_lr"]

OPTIMIZERS = ("sgd", "momentum", "rmsproptf", "adamw", "adam")

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


def create_optimizer(
    model: nn.Module,
    opt: str,
    lr: float,
    weight_decay: float = 0.0,
    momentum: float = 0.9,
    eps: float | None = None,
    betas: tuple[float, float] | None = None,
) -> torch.optim.Optimizer:
    """Build an optimizer over :func:`param_groups` (no decay on norms, biases, scales).

    ``opt`` is one of :data:`OPTIMIZERS`:

    - ``sgd``: SGD with Nesterov momentum (timm's meaning of ``--opt sgd``), coupled weight decay.
    - ``momentum``: SGD with plain (heavy-ball) momentum.
    - ``rmsproptf``: :class:`RMSpropTF`, alpha 0.9, eps 1e-3 by default (EfficientNetV2).
    - ``adamw``: decoupled weight decay (ConvNeXt, RepLKNet recipes), eps 1e-8 by default.
    - ``adam``: Adam with coupled L2.
    """
    name = opt.lower().replace("-", "").replace("_", "")
    if name not in OPTIMIZERS:
        raise ValueError(f"Unknown optimizer {opt!r}; expected one of {', '.join(OPTIMIZERS)}.")
    groups = param_groups(model, weight_decay)
    for g in groups:
        g.pop("names")  # torch keeps unknown keys in state_dict; keep checkpoints small
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


def scale_lr(lr: float, batch_size: int, base_batch_size: int) -> float:
    """Linear scaling rule (Goyal et al., 2017): ``lr * batch_size / base_batch_size``.

    EfficientNetV2 quotes 0.016 per 256 images, i.e. 0.256 at batch 4096.
    """
    if batch_size <= 0 or base_batch_size <= 0:
        raise ValueError(f"batch sizes must be positive, got {batch_size} and {base_batch_size}")
    return lr * batch_size / base_batch_size
