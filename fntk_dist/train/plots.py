"""loss.png: the training loss on a log scale against the curve H(0) predicts (L_lin) and the
rates theory predicts."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt  # noqa: E402

from ..atomic import atomic_path  # noqa: E402


def plot_loss(path: Path, steps: list[int], losses: list[float], rates: dict[str, float | None],
              title: str, predicted: list[float] | None = None) -> None:
    """predicted: L_lin at the same steps (None where it was not computed)."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=150)
    ax.semilogy(steps, losses, lw=2, label="loss")
    l0, last = losses[0], steps[-1] if steps else 0
    floor = min((v for v in losses if v > 0), default=l0) / 10
    if predicted is not None:
        ax.semilogy(steps, [max(v, floor) for v in predicted], "k:", lw=1.5,
                    label="L_lin: GD linearised at H(0)")
    for label, rate in rates.items():
        if rate is not None and 0 < rate < 1:
            ts = [t for t in range(0, last + 1, max(1, last // 200))]
            ax.semilogy(ts, [max(l0 * rate**t, floor) for t in ts], "--", lw=1, label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("loss  1/2 sum (f - y)^2")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
