"""Optional logging beyond ``metrics.csv``: TensorBoard (``--log-tensorboard``) and Weights & Biases
(``--log-wandb``), one scalar per epoch-row column, like timm's ``update_summary``. Both packages are optional
(``pip install 'moderncnn[tensorboard]'``, ``pip install wandb``); a missing one is a one-line configuration error
before the run starts (``training.config``), never a traceback mid-run."""

from __future__ import annotations

import numbers
from pathlib import Path
from typing import Any

from ..errors import ConfigError

__all__ = ["ExternalLog"]


class ExternalLog:
    """Writes each epoch row (numbers only) to the loggers the configuration turns on (primary process only)."""

    def __init__(self, run_dir: Path, cfg: Any, *, enabled: bool = True) -> None:
        self.tb = self.wandb_run = None
        if not enabled:
            return
        if cfg.log_tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as exc:
                raise ConfigError(f"--log-tensorboard needs the tensorboard package ({exc}): "
                                  "pip install 'moderncnn[tensorboard]'") from None
            self.tb = SummaryWriter(log_dir=str(Path(run_dir) / "tb"))
        if cfg.log_wandb:
            try:
                import wandb
            except ImportError:
                raise ConfigError("--log-wandb needs the wandb package, which is not installed: pip install wandb "
                                  "(or leave out --log-wandb)") from None
            self.wandb_run = wandb.init(name=Path(run_dir).name, dir=str(run_dir), config=cfg.to_dict())

    def epoch(self, row: dict[str, Any]) -> None:
        scalars = {k: float(v) for k, v in row.items()
                   if k != "epoch" and isinstance(v, numbers.Real) and not isinstance(v, bool)}
        step = int(row["epoch"])
        if self.tb is not None:
            for k, v in scalars.items():
                self.tb.add_scalar(k, v, step)
            self.tb.flush()
        if self.wandb_run is not None:
            self.wandb_run.log({"epoch": step, **scalars}, step=step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None
        if self.wandb_run is not None:
            self.wandb_run.finish()
            self.wandb_run = None
