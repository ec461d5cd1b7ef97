"""Training-history plots.
"""

from __future__ import annotations

from pathlib import Path


def plot_history(history: list[dict], tasks: list[str], out_dir: Path) -> list[Path]:
    """One PNG of learning curves per task (train loss, validation AUC and log loss by epoch)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    epochs = [h["epoch"] for h in history]
    for t in tasks:
        fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
        axes[0].plot(epochs, [h[f"{t}/train_loss"] for h in history], marker="o")
        axes[0].set_title(f"{t}: train loss")
        axes[1].plot(epochs, [h[f"{t}/auc"] for h in history], marker="o", label="model")
        if f"{t}/ceiling_auc" in history[0]:
            axes[1].axhline(history[0][f"{t}/ceiling_auc"], color="gray", ls="--", label="true affinity (ceiling)")
        axes[1].set_title(f"{t}: validation AUC")
        axes[1].legend(fontsize=8)
        axes[2].plot(epochs, [h[f"{t}/logloss"] for h in history], marker="o", color="tab:red")
        axes[2].set_title(f"{t}: validation log loss")
        for a in axes:
            a.set_xlabel("epoch")
            a.grid(alpha=0.3)
        fig.tight_layout()
        p = out_dir / f"curves_{t}.png"
        fig.savefig(p, dpi=90)
        plt.close(fig)
        paths.append(p)
    return paths
