"""PNGs of the experiments, when matplotlib is importable (``pip install seqpred[plot]``); None otherwise.

* memory: error against length/lag, one line per cell;
* variants: box plot of validation nats/char per variant at its best learning rate, and the lr sweep.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from model.experiments.memory import MemoryConfig, RunResult
    from model.experiments.variants import VariantResult, VariantsConfig


def memory_plot(exp: MemoryConfig, results: Sequence[RunResult], png: Path) -> Path | None:
    """Two panels: adding-problem MSE against T (log scale) and remember-first error rate against the lag.

    One line per cell (mean over seeds, error bars = sample std), dashed baselines. None without matplotlib.
    """
    plt = _pyplot()
    if plt is None:
        return None
    from model.data.tasks import ADDING_BASELINE_MSE
    from model.experiments.memory import DEEP_CELLS
    from model.experiments.runner import summarize

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
                label = cell if cell not in DEEP_CELLS else f"{cell} ({DEEP_CELLS[cell]} layers)"
                ax.errorbar(xs, ms, yerr=ss, marker="o", capsize=3, label=label)
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


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def variants_plot(exp: VariantsConfig, results: Sequence[VariantResult], png: Path) -> Path | None:
    """Left: a box plot of validation nats/char per variant at its best learning rate (every seed drawn as a
    dot), best variant on top, dashed line at the reference's median. Right: mean nats/char against the
    learning rate, one line per variant. None without matplotlib."""
    plt = _pyplot()
    if plt is None:
        return None
    from model.experiments.runner import summarize
    from model.experiments.tables import best_lrs
    from model.experiments.variants import REFERENCE

    best = best_lrs(exp, results)
    rows = []
    for name, lr in best.items():
        vals = [r.val_nats for r in results if r.variant == name and r.lr == lr and r.val_nats is not None]
        rows.append((float(sum(vals) / len(vals)), name, vals))
    rows.sort(reverse=True)  # matplotlib draws the first box at the bottom: best (lowest) on top
    cap = _axis_cap([m for m, _, _ in rows])
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 0.35 * len(rows) + 2.5), gridspec_kw={"width_ratios": [3, 2]})
    if rows:
        import matplotlib

        new_kw = tuple(matplotlib.__version_info__[:2]) >= (3, 10)
        ax1.boxplot(
            [v for _, _, v in rows], widths=0.6, **({"orientation": "horizontal"} if new_kw else {"vert": False})
        )
        for k, (_, _, vals) in enumerate(rows, 1):
            ax1.plot(vals, [k] * len(vals), "o", ms=3, color="C1", alpha=0.7)
            if cap is not None and max(vals) > cap:  # off the axis: say where it went
                ax1.annotate(f"max {max(vals):.3g} →", (cap, k), ha="right", va="center", fontsize=7, color="C3")
        ax1.set_yticks(range(1, len(rows) + 1), [f"{n} (lr {best[n]:g})" for _, n, _ in rows], fontsize=8)
        if cap is not None:
            lo = min(min(v) for _, _, v in rows)
            ax1.set_xlim(lo - 0.05 * (cap - lo), cap)
        ref = [v for _, n, v in rows if n == REFERENCE]
        if ref:
            ax1.axvline(sorted(ref[0])[len(ref[0]) // 2], color="k", ls="--", lw=1, label=f"{REFERENCE} median")
            ax1.legend(fontsize=8)
    ax1.set_xlabel("validation nats/char at the best learning rate")
    ax1.grid(alpha=0.3, axis="x")
    lrs = sorted(exp.lrs)
    means_all: list[float] = []
    for i, name in enumerate(exp.variants):
        xs, ms = [], []
        for lr in lrs:
            mean, _, n, _ = summarize([r.val_nats for r in results if r.variant == name and r.lr == lr])
            if n:
                xs.append(lr)
                ms.append(mean)
        if xs:
            ax2.plot(xs, ms, marker="o", ls=("-", "--", ":")[i // 10 % 3], label=name)  # 10 colours per style
            means_all += ms
    cap2 = _axis_cap(means_all)
    if cap2 is not None:
        lo = min(means_all)
        ax2.set_ylim(lo - 0.05 * (cap2 - lo), cap2)
    ax2.set_xscale("log")
    ax2.set_xlabel("peak learning rate")
    ax2.set_ylabel("mean validation nats/char")
    ax2.grid(alpha=0.3)
    ax2.legend(fontsize=7, ncol=2)
    fig.suptitle(
        f"{exp.steps} steps of {exp.batch}x{exp.seq_len} chars, hidden {exp.hidden}, {exp.seeds} seed(s)", fontsize=9
    )
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return png


def _axis_cap(values: Sequence[float]) -> float | None:
    """An upper axis limit that keeps a blown-up run (e.g. 90 nats/char) from squashing the others: the
    median plus 4x the spread below it, or None when every value is within that."""
    if len(values) < 3:
        return None
    v = sorted(values)
    med = v[len(v) // 2]
    cap = med + 4 * max(med - v[0], 1e-3)
    return cap if v[-1] > cap else None
