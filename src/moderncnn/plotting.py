"""matplotlib is an optional extra (``pip install moderncnn[plot]``): every figure asks for it here.

A missing matplotlib never stops a run: the figure is skipped with a one-line note on stderr.
"""

from __future__ import annotations

import sys
from types import ModuleType

_noted: set[str] = set()


def pyplot(what: str) -> ModuleType | None:
    """``matplotlib.pyplot`` on the headless Agg backend, or ``None`` (after a note) when not installed."""
    try:
        import matplotlib
    except ImportError:
        if what not in _noted:
            _noted.add(what)
            print(f"note: matplotlib is not installed, so {what} is not drawn (pip install 'moderncnn[plot]')",
                  file=sys.stderr)
        return None
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt
