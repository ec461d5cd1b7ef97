"""Metrics of the training framework: AUC and log loss.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


# ---------------------------------------------------------------- metrics
def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Rank-based ROC AUC (ties get average ranks)."""
    labels = np.asarray(labels).astype(bool)
    n_pos, n_neg = labels.sum(), (~labels).sum()
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = pd.Series(scores).rank(method="average").to_numpy()
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def log_loss(labels: np.ndarray, logits: np.ndarray) -> float:
    p = np.clip(1 / (1 + np.exp(-logits)), 1e-7, 1 - 1e-7)
    return float(-np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p)))
