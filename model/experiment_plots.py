"""PNG of the memory experiment (error against lag, one line per cell), when matplotlib is importable."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from model.experiments import MemoryConfig, RunResult


def memory_plot(exp: MemoryConfig, results: Sequence[RunResult], png: Path) -> Path | None:
    """Two panels: adding-problem MSE against T (log scale) and remember-first error rate against the lag.

    One line per cell (mean over seeds, error bars = sample std), dashed baselines. None without matplotlib.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    from model.experiments import summarize
    from model.tasks import ADDING_BASELINE_MSE

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for cell in exp.cells:
        for ax, task, lengths, value in (
            (ax1, "adding", exp.adding_lengths, lambda r: r.metric),
            (ax2, "remember_first", exp.lags, lambda r: None if r.accuracy is None else 1.0 - r.accuracy),
        ):
            xs, ms, ss = [], [], []
            for n in sorted(lengths):
                mean, std, k, _ = summarize(
                    [value(r) for r in results if (r.cell, r.task, r.length) == (cell, task, n)]
                )
                if k:
                    xs.append(n)
                    ms.append(mean)
                    ss.append(std)
            if xs:
                ax.errorbar(xs, ms, yerr=ss, marker="o", capsize=3, label=cell)
    ax1.axhline(ADDING_BASELINE_MSE, color="k", ls="--", lw=1, label="predict 1")
    ax1.set_yscale("log")
    ax1.set_xlabel("sequence length T")
    ax1.set_ylabel("held-out MSE")
    ax1.set_title("adding problem")
    ax2.axhline(1.0 - 1.0 / exp.n_symbols, color="k", ls="--", lw=1, label="chance")
    ax2.set_ylim(-0.02, 1.0)
    ax2.set_xlabel("lag")
    ax2.set_ylabel("held-out error rate (last position)")
    ax2.set_title(f"remember the first symbol ({exp.n_symbols} symbols)")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{exp.steps} steps per run, hidden {exp.hidden}, {exp.seeds} seed(s)", fontsize=9)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return png
