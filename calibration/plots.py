"""Parity plots (predicted vs measured) and residuals vs shape."""

from __future__ import annotations

import os

import numpy as np

from calibration.schema import Measurements
from jaxsim.fileio import atomic_open


def parity(m: Measurements, pred: np.ndarray, train: np.ndarray, path: str | None = None,
           title: str = ""):
    """One log-log panel per operator: measured vs predicted, held-out rows in colour."""
    import matplotlib.pyplot as plt

    ops = sorted(set(m["op"].astype(str).tolist()))
    ncol = min(4, len(ops))
    nrow = -(-len(ops) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.2 * ncol, 3.0 * nrow), squeeze=False)
    t = np.asarray(m["time_s"]) * 1e6
    p = pred * 1e6
    for ax, op in zip(axes.flat, ops, strict=False):
        sel = m["op"].astype(str) == op
        ax.loglog(t[sel & train], p[sel & train], ".", ms=2, color="0.7", label="train")
        ax.loglog(t[sel & ~train], p[sel & ~train], ".", ms=3, color="C3", label="held out")
        lo, hi = min(t[sel].min(), p[sel].min()), max(t[sel].max(), p[sel].max())
        ax.plot([lo, hi], [lo, hi], "k-", lw=0.7)
        ax.set_title(op, fontsize=9)
        ax.set_xlabel("measured (µs)", fontsize=8)
        ax.set_ylabel("predicted (µs)", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(ops):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    if path:
        fmt = os.path.splitext(os.fspath(path))[1].lstrip(".") or "png"
        with atomic_open(path, "wb") as f:
            fig.savefig(f, format=fmt, dpi=110)
        plt.close(fig)
    return fig
