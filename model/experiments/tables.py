"""Markdown tables of the experiments: mean ± sample std over seeds, and each variant's best learning rate.

Variants comparison (``seqpred experiment variants``): a variant's best learning rate is the one with the
lowest mean validation nats/char over its seeds (lrs where every seed diverged are skipped; ties go to the
smaller lr). Against its reference row (see :class:`~model.experiments.variants.Variant`), both at their best
lr, the table gives the difference of means Δ = m_v - m_ref with its standard error
se = sqrt(s_v²/n_v + s_ref²/n_ref) and Welch's t = Δ / se (with 3 seeds per side |t| > 2.8 is p < 0.05
two-sided, df ≈ 4). Choosing the lr on the same validation text that reports it flatters every row alike.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from model.data.tasks import ADDING_BASELINE_MSE
from model.experiments.memory import MemoryConfig, RunResult
from model.experiments.runner import mean_std_text, summarize
from model.experiments.variants import Variant, VariantResult, VariantsConfig


def memory_markdown(exp: MemoryConfig, results: Sequence[RunResult]) -> str:
    """Tables of mean ± sample std over seeds per cell and length, with the baselines."""
    by: dict[tuple[str, str, int], list[RunResult]] = {}
    for r in results:
        by.setdefault((r.cell, r.task, r.length), []).append(r)
    seeds = f"{exp.seeds} seed{'s' if exp.seeds > 1 else ''}"
    budget = (
        f"{exp.steps} steps (cap {exp.max_seconds:g} s) per run, batch {exp.batch}, hidden {exp.hidden}, "
        f"Adam lr {exp.lr:g} (warmup {exp.warmup}, final x{exp.min_lr_frac:g}), clip {exp.clip:g}, "
        f"forget bias {exp.forget_bias:g}; held-out {exp.eval_size} sequences"
    )
    lines = [f"Budget: {budget}. Mean ± sample std over {seeds}.", ""]
    layers = {r.cell: r.layers for r in results}

    def table(title: str, task: str, lengths: Sequence[int], key: str, label: str, fmt: str, base: str) -> None:
        lengths = sorted(lengths)
        lines.extend([f"### {title}", ""])
        lines.append("| cell | " + " | ".join(f"{label}={n}" for n in lengths) + " |")
        lines.append("|---|" + "---|" * len(lengths))
        for cell in exp.cells:
            row = [mean_std_text([getattr(r, key) for r in by.get((cell, task, n), [])], fmt) for n in lengths]
            name = cell if layers.get(cell, 1) == 1 else f"{cell} ({layers[cell]} layers)"
            lines.append(f"| {name} | " + " | ".join(row) + " |")
        lines.append(f"| *{base}* | " + " | ".join("" for _ in lengths) + " |")
        lines.append("")

    table(
        "Adding problem: held-out MSE (lower is better)",
        "adding",
        exp.adding_lengths,
        "metric",
        "T",
        ".4f",
        f"baseline (always predict 1): {ADDING_BASELINE_MSE}",
    )
    table(
        f"Remember the first symbol: held-out accuracy at the last position ({exp.n_symbols} symbols)",
        "remember_first",
        exp.lags,
        "accuracy",
        "lag",
        ".3f",
        f"chance: {1.0 / exp.n_symbols:.3f}",
    )
    table(
        "Remember the first symbol: held-out cross-entropy at the last position (nats)",
        "remember_first",
        exp.lags,
        "eval_loss",
        "lag",
        ".3f",
        f"chance: ln {exp.n_symbols} = {math.log(exp.n_symbols):.3f}",
    )
    secs = sum(r.train_seconds + r.eval_seconds for r in results)
    cut = sum(1 for r in results if r.steps < exp.steps and not r.diverged)
    lines.append(f"{len(results)} runs, {secs:.1f} s of training and evaluation; {cut} cut short by the cap.")
    return "\n".join(lines) + "\n"


def _values(results: Sequence[VariantResult], variant: str, lr: float) -> list[float | None]:
    return [r.val_nats for r in results if r.variant == variant and r.lr == lr]


def best_lrs(exp: VariantsConfig, results: Sequence[VariantResult]) -> dict[str, float]:
    """Each variant's learning rate with the lowest mean validation nats/char (variants with no finite run are
    left out; ties go to the smaller lr)."""
    best: dict[str, float] = {}
    for v in exp.variants:
        scored = []
        for lr in sorted(exp.lrs):
            mean, _, n, _ = summarize(_values(results, v, lr))
            if n:
                scored.append((mean, lr))
        if scored:
            best[v] = min(scored)[1]
    return best


def welch(a: Sequence[float | None], b: Sequence[float | None]) -> tuple[float, float, float]:
    """``(Δ = mean(a) - mean(b), its standard error, Welch's t)`` over the finite values; se and t are NaN
    when a side has fewer than 2 values, t is NaN when both sides have zero spread."""
    ma, sa, na, _ = summarize(a)
    mb, sb, nb, _ = summarize(b)
    d = ma - mb
    if na < 2 or nb < 2:
        return d, math.nan, math.nan
    se = math.sqrt(sa * sa / na + sb * sb / nb)
    return d, se, (d / se if se > 0 else math.nan)


def variants_markdown(
    exp: VariantsConfig, results: Sequence[VariantResult], variants: dict[str, Variant], data_note: str = ""
) -> str:
    """The summary table (best lr per variant, Δ against its reference) and the per-lr table."""
    best = best_lrs(exp, results)
    seeds = f"{exp.seeds} seed{'s' if exp.seeds > 1 else ''}"
    budget = (
        f"{exp.steps} steps per run of batch {exp.batch} x {exp.seq_len} characters, hidden {exp.hidden}, "
        f"embed {exp.embed}, Adam (warmup {min(exp.warmup, exp.steps // 10)}, cosine to x{exp.min_lr_frac:g}), "
        f"clip {exp.clip:g}; learning rates {', '.join(f'{lr:g}' for lr in sorted(exp.lrs))}"
    )
    lines = [f"Budget: {budget}. Mean ± sample std over {seeds}. {data_note}".rstrip(), ""]
    lines += ["### Validation nats/char at each variant's best learning rate (lower is better)", ""]
    lines += [
        "| variant | what | layers | params | best lr | nats/char | vs | Δ ± se | t |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    params = {r.variant: r.params for r in results}
    for name in exp.variants:
        v = variants[name]
        if name not in best:
            lines.append(f"| {name} | {v.about} | {v.layers} | {params.get(name, '')} | - | diverged | | | |")
            continue
        vals = _values(results, name, best[name])
        vs = d_text = t_text = ""
        if v.ref is not None and v.ref in best:
            d, se, t = welch(vals, _values(results, v.ref, best[v.ref]))
            vs = v.ref
            d_text = f"{d:+.4f}" + ("" if math.isnan(se) else f" ± {se:.4f}")
            t_text = "" if math.isnan(t) else f"{t:+.1f}"
        row = [name, v.about, str(v.layers), str(params.get(name, "")), f"{best[name]:g}"]
        row += [mean_std_text(vals, ".4f"), vs, d_text, t_text]
        lines.append("| " + " | ".join(row) + " |")
    lrs = sorted(exp.lrs)
    lines += ["", "### Validation nats/char at every learning rate (best in bold)", ""]
    lines += ["| variant | " + " | ".join(f"lr={lr:g}" for lr in lrs) + " |", "|---|" + "---|" * len(lrs)]
    for name in exp.variants:
        cells = []
        for lr in lrs:
            text = mean_std_text(_values(results, name, lr), ".4f")
            cells.append(f"**{text}**" if best.get(name) == lr else text)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    secs = sum(r.train_seconds + r.eval_seconds for r in results)
    div = sum(1 for r in results if r.diverged)
    lines += ["", f"{len(results)} runs, {secs:.1f} s of training and evaluation (summed over runs); {div} diverged."]
    return "\n".join(lines) + "\n"
