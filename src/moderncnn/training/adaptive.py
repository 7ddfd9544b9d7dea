"""Layer-wise adaptive optimizers for large batches and scale-invariant weights: LAMB, LARS, AdamP.

Each follows its paper's update; where timm (and the NVIDIA/apex implementations it follows) fixes a detail the
paper leaves open, we take timm's choice so that ``--opt lamb|lars|adamp`` means the same in both (defaults are
timm's ``create_optimizer_v2`` ones; tests/test_timm_training_flags.py checks the updates against timm's):

- :class:`Lamb`: You et al., "Large Batch Optimization for Deep Learning: Training BERT in 76 minutes",
  ICLR 2020, Algorithm 2. As in NVIDIA's NVLAMB (the variant timm implements), gradients are first divided by
  ``max(1, global_grad_norm / max_grad_norm)``, and the trust ratio only adapts parameters that are decayed.
- :class:`Lars`: You, Gitman & Ginsburg, "Large Batch Training of Convolutional Networks", 2017, Algorithm 1
  (trust coefficient eta 0.001), with torch's SGD momentum (the buffer starts at the first update); like apex's
  LARC, only decayed parameters are adapted.
- :class:`AdamP`: Heo et al., "AdamP: Slowing Down the Slowdown for Momentum Optimizers on Scale-invariant
  Weights", ICLR 2021, Algorithm 2 (projection when the cosine between gradient and weight is below
  ``delta / sqrt(dim)``, per output channel or else per layer; weight decay scaled by ``wd_ratio`` there).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch.nn import functional as F

__all__ = ["AdamP", "Lamb", "Lars"]


def _closure_loss(closure: Callable[[], torch.Tensor] | None) -> torch.Tensor | None:
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


def _adam_moments(state: dict, p: torch.Tensor, g: torch.Tensor, b1: float, b2: float
                  ) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Advance Adam's moments of ``p`` by gradient ``g`` (Kingma & Ba, ICLR 2015, Alg. 1): ``(m, v, step)``."""
    if not state:
        state["step"] = 0
        state["exp_avg"] = torch.zeros_like(p)
        state["exp_avg_sq"] = torch.zeros_like(p)
    state["step"] += 1
    m, v = state["exp_avg"], state["exp_avg_sq"]
    m.mul_(b1).add_(g, alpha=1.0 - b1)
    v.mul_(b2).addcmul_(g, g, value=1.0 - b2)
    return m, v, state["step"]


def _trust(w_norm: torch.Tensor, u_norm: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
    """The trust ratio, or 1 where either norm is zero (a fresh zero-initialised weight, a zero update)."""
    return torch.where((w_norm > 0) & (u_norm > 0), ratio, torch.ones_like(ratio))


class Lamb(torch.optim.Optimizer):
    """LAMB (You et al., ICLR 2020, Algorithm 2) with NVLAMB's global gradient pre-normalisation.

    For each parameter ``x`` with gradient ``g`` (after ``g /= max(1, ||all g|| / max_grad_norm)``)::

        m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
        r = (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps) + wd x
        x -= lr * (||x|| / ||r||) * r      # trust ratio only where wd > 0 (1 where a norm is 0)
    """

    def __init__(self, params: Iterable[torch.Tensor] | Iterable[dict], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-6, weight_decay: float = 0.01,
                 max_grad_norm: float | None = 1.0) -> None:
        if lr < 0.0 or eps < 0.0 or weight_decay < 0.0:
            raise ValueError(f"Lamb: lr, eps and weight_decay must be >= 0, got {lr}, {eps}, {weight_decay}")
        if not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"Lamb: betas must be in [0, 1), got {betas}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))
        self.max_grad_norm = max_grad_norm

    def _grad_divisor(self) -> torch.Tensor | None:
        grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        if self.max_grad_norm is None or not grads:
            return None
        total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(x) for x in grads]))
        return (total / self.max_grad_norm).clamp(min=1.0)

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        loss = _closure_loss(closure)
        divisor = self._grad_divisor()
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad if divisor is None else p.grad / divisor
                m, v, t = _adam_moments(self.state[p], p, g, b1, b2)
                r = (m / (1.0 - b1**t)) / ((v / (1.0 - b2**t)).sqrt() + group["eps"])
                wd = group["weight_decay"]
                if wd != 0.0:
                    r.add_(p, alpha=wd)
                    w_norm, r_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(r)
                    r.mul_(_trust(w_norm, r_norm, w_norm / r_norm))
                p.sub_(r * group["lr"])
        return loss


class Lars(torch.optim.Optimizer):
    """LARS (You, Gitman & Ginsburg, 2017, Algorithm 1) on top of torch's SGD momentum.

    For a decayed parameter ``w`` (``weight_decay > 0``) with gradient ``g``::

        local = trust_coeff * ||w|| / (||g|| + wd ||w|| + eps)     # 1 where a norm is 0
        u = local * (g + wd w)
        buf = momentum * buf + u  (buf = u at the first step);  w -= lr * buf   (nesterov: u + momentum * buf)

    Parameters without weight decay (norms, biases) take the plain SGD step.
    """

    def __init__(self, params: Iterable[torch.Tensor] | Iterable[dict], lr: float = 1.0, momentum: float = 0.0,
                 weight_decay: float = 0.0, trust_coeff: float = 0.001, eps: float = 1e-8,
                 nesterov: bool = False) -> None:
        if lr < 0.0 or momentum < 0.0 or weight_decay < 0.0:
            raise ValueError(f"Lars: lr, momentum and weight_decay must be >= 0, got {lr}, {momentum}, {weight_decay}")
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, trust_coeff=trust_coeff,
                                      eps=eps, nesterov=nesterov))

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        loss = _closure_loss(closure)
        for group in self.param_groups:
            wd, mom = group["weight_decay"], group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                u = p.grad
                if wd != 0.0:
                    w_norm, g_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(u)
                    local = group["trust_coeff"] * w_norm / (g_norm + wd * w_norm + group["eps"])
                    u = (u + wd * p) * _trust(w_norm, g_norm, local)
                if mom != 0.0:
                    state = self.state[p]
                    if "momentum_buffer" not in state:
                        state["momentum_buffer"] = u.clone()
                    else:
                        state["momentum_buffer"].mul_(mom).add_(u)
                    buf = state["momentum_buffer"]
                    u = u + mom * buf if group["nesterov"] else buf
                p.sub_(u * group["lr"])
        return loss


class AdamP(torch.optim.Optimizer):
    """AdamP (Heo et al., ICLR 2021, Algorithm 2): Adam whose step loses its radial component on scale-invariant
    weights, detected by a small cosine between gradient and weight.

    With ``p = m_hat / (sqrt(v_hat) + eps)`` (nesterov: ``b1 m + (1 - b1) g`` in place of ``m``): for a weight of
    2 or more dims, if ``max |cos(g, w)| < delta / sqrt(d)`` per output channel (d = fan-in), or else per whole
    layer, ``p -= w_hat <w_hat, p>`` (``w_hat`` the unit weight of that view) and the decoupled weight decay is
    multiplied by ``wd_ratio``; then ``w *= 1 - lr wd``; ``w -= lr p``.
    """

    def __init__(self, params: Iterable[torch.Tensor] | Iterable[dict], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0,
                 delta: float = 0.1, wd_ratio: float = 0.1, nesterov: bool = False) -> None:
        if lr < 0.0 or eps < 0.0 or weight_decay < 0.0:
            raise ValueError(f"AdamP: lr, eps and weight_decay must be >= 0, got {lr}, {eps}, {weight_decay}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, delta=delta,
                                      wd_ratio=wd_ratio, nesterov=nesterov))

    @staticmethod
    def _project(w: torch.Tensor, g: torch.Tensor, step: torch.Tensor, delta: float, eps: float
                 ) -> tuple[torch.Tensor, bool]:
        """``step`` without its component along ``w`` when ``w`` looks scale-invariant (per channel, else per
        layer); returns (step, projected)."""
        for rows in (w.shape[0], 1):  # (out channels, fan-in) first, then the layer as one vector
            w2, g2 = w.reshape(rows, -1), g.reshape(rows, -1)
            cos = F.cosine_similarity(g2, w2, dim=1, eps=eps).abs()
            if cos.max() < delta / math.sqrt(w2.shape[1]):
                unit = w2 / (torch.linalg.vector_norm(w2, dim=1, keepdim=True) + eps)
                s2 = step.reshape(rows, -1)
                s2 = s2 - unit * (unit * s2).sum(dim=1, keepdim=True)
                return s2.reshape(step.shape), True
        return step, False

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        loss = _closure_loss(closure)
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                m, v, t = _adam_moments(self.state[p], p, g, b1, b2)
                denom = (v / (1.0 - b2**t)).sqrt() + group["eps"]
                numer = b1 * m + (1.0 - b1) * g if group["nesterov"] else m
                step = numer / denom
                wd_scale = 1.0
                if p.ndim > 1:
                    step, projected = self._project(p, g, step, group["delta"], group["eps"])
                    wd_scale = group["wd_ratio"] if projected else 1.0
                if group["weight_decay"] > 0.0:
                    p.mul_(1.0 - group["lr"] * group["weight_decay"] * wd_scale)
                p.sub_(step * (group["lr"] / (1.0 - b1**t)))
        return loss
