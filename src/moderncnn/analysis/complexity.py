"""Parameter and MAC counts, computed on the meta device (no memory, no arithmetic)."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: nn.Module) -> int:
    """Trainable and frozen parameters (buffers such as BN statistics excluded), as timm counts."""
    return sum(p.numel() for p in model.parameters())


def count_gmacs(model: nn.Module, input_size: int | tuple[int, int], in_chans: int | None = None) -> float:
    """Multiply-accumulates of one image, in G: conv and linear (matmul) only, as the papers count.

    FlopCounterMode reports 2 FLOPs per MAC; we halve it. The model may live on the meta device.
    """
    h, w = (input_size, input_size) if isinstance(input_size, int) else input_size
    in_chans = in_chans or getattr(model, "in_chans", 3)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    x = torch.zeros(1, in_chans, h, w, device=device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    model.train(was_training)
    return counter.get_total_flops() / 2 / 1e9


def build_meta(name: str, **kwargs) -> nn.Module:
    """Build a registered model on the meta device: instant, even for 350M parameters."""
    from ..factory import create_model

    with torch.device("meta"):
        return create_model(name, **kwargs)
