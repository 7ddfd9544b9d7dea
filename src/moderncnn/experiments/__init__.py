"""The papers' findings, reproduced at small scale: ``moderncnn experiment NAME`` (docs/experiments/README.md).

An experiment is data (``catalog.py``: the claim, a table of arms, the budget) and one function
(``framework.run_experiment``: train and measure every arm, resumably); its report (``report.py``) and its
verdict (``verdict.py``) follow from the measured numbers.
"""

from .framework import Arm, Claim, Experiment, RunOptions, run_experiment
from .verdict import INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED, combine, compare


def get_experiment(name: str) -> Experiment:
    """The experiment called ``name``; an unknown name is an error listing the valid ones."""
    import difflib

    from ..errors import ConfigError
    from .catalog import EXPERIMENTS

    if name not in EXPERIMENTS:
        close = difflib.get_close_matches(name, list(EXPERIMENTS), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"unknown experiment {name!r}.{hint} Valid experiments: {', '.join(EXPERIMENTS)}")
    return EXPERIMENTS[name]


__all__ = ["Arm", "Claim", "Experiment", "RunOptions", "run_experiment", "get_experiment", "compare", "combine",
           "REPRODUCED", "NOT_REPRODUCED", "INCONCLUSIVE"]
