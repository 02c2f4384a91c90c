"""The training history as a picture (matplotlib, the optional ``plot`` extra)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

__all__ = ["plot_history"]


def plot_history(history: Any, path: str | os.PathLike | None = None, *, log_scale: bool = True):
    """Plot ``loss`` (and any other per-step series in ``history``) against the step;
    save a PNG to ``path`` if given.

    Args:
      history: a :class:`FitResult` or its ``history`` dict.
      path: where to write the PNG (``None``: only return the figure).
      log_scale: logarithmic y axis (natural for a loss falling over decades).

    Returns:
      The ``matplotlib.figure.Figure`` (made without pyplot, so no window opens).

    >>> import numpy as np
    >>> fig = plot_history({"step": np.arange(3), "loss": np.array([1.0, 0.5, 0.25])})
    >>> type(fig).__name__
    'Figure'
    """
    where = "plot_history(history)"
    history = getattr(history, "history", history)
    if not isinstance(history, dict) or "loss" not in history:
        raise TypeError(f"{where}: expected a FitResult or its history dict with a 'loss' entry, "
                        f"got {type(history).__name__}.")
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError(f"{where} needs matplotlib: pip install 'functorch-lite[plot]'.") from None
    loss = np.asarray(history["loss"], dtype=float)
    steps = np.asarray(history.get("step", np.arange(len(loss))))
    names = ["loss"] + [k for k in history if k not in ("loss", "step") and np.ndim(history[k]) == 1
                        and len(history[k]) == len(loss)]
    fig = Figure(figsize=(6, 2.6 * len(names)))
    FigureCanvasAgg(fig)
    for i, name in enumerate(names):
        ax = fig.add_subplot(len(names), 1, i + 1)
        values = np.asarray(history[name], dtype=float)
        ax.plot(steps, values, lw=1)
        positive = values[np.isfinite(values)] > 0
        if log_scale and positive.size and positive.all():
            ax.set_yscale("log")
        ax.set_ylabel(name)
        ax.grid(True, alpha=0.3)
    fig.axes[-1].set_xlabel("step")
    fig.tight_layout()
    if path is not None:
        fig.savefig(os.fspath(path), format="png", dpi=100)
    return fig
