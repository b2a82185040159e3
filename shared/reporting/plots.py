"""PNG plots (matplotlib, Agg backend): ROC curves per dataset and training curves."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from shared.reporting.table import dataset_label


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_roc(
    curves: Mapping[str, tuple[np.ndarray, np.ndarray, float]], path: str | Path, title: str = "ROC (test)"
) -> Path:
    """``curves``: dataset name -> ``(fpr, tpr, auc)``; one line per dataset plus the chance diagonal."""
    plt = _plt()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=110)
    for name, (fpr, tpr, value) in curves.items():
        ax.plot(fpr, tpr, drawstyle="steps-post", label=f"{dataset_label(name)} (AUC {value:.3f})")
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_title(title, fontsize=9)
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_curves(
    series: Mapping[str, Sequence[float]],
    path: str | Path,
    xlabel: str = "epoch",
    ylabel: str = "",
    title: str = "",
) -> Path:
    """One line per named series (e.g. training loss, validation AUC) against epoch 1..n."""
    plt = _plt()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=110)
    for name, ys in series.items():
        ax.plot(np.arange(1, len(ys) + 1), ys, marker="o", ms=3, label=name)
    ax.set_xlabel(xlabel)
    ax.xaxis.get_major_locator().set_params(integer=True)  # epochs and rounds are whole numbers
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
