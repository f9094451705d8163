"""``seqpred experiment NAME``: the benchmark experiments' command line and outputs.

* ``memory`` (:mod:`model.experiments.memory`): long-lag memory of every cell (adding problem,
  remember-the-first-symbol).
* ``variants`` (:mod:`model.experiments.variants`): a Greff et al. (2015) style comparison of the cell
  variants on a char corpus, with a learning-rate sweep and Jozefowicz et al.'s forget-bias ablation.

Both run their independent runs on a process pool, append each finished run to ``records.jsonl`` and resume
from it (:mod:`model.experiments.runner`), then write ``results.json``, ``results.md`` (also printed) and,
when matplotlib is importable, ``results.png`` under ``--out``. User errors are one line and exit code 2,
before anything is written.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, NoReturn

from model import config as model_config
from model.data.tasks import ADDING_BASELINE_MSE
from model.errors import EXIT_INTERRUPTED, ConfigError, SeqpredError, report_error
from model.experiments import memory as M
from model.experiments import variants as V
from model.experiments.runner import (
    RECORDS_FILE,
    Key,
    Progress,
    Record,
    RunFn,
    append_record,
    default_workers,
    jsonable,
    parse_list,
    prepare_out,
    run_all,
)


class _Parser(argparse.ArgumentParser):
    """argparse whose errors become a one-line :class:`ConfigError` (exit 2) instead of usage + message."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError(message)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="directory for records.jsonl, results.json/.md/.png")
    p.add_argument("--jobs", type=int, default=None, help=f"runs in parallel (default: the {default_workers()} cores)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--resume", action="store_true", help="continue the experiment in --out (skip finished runs)")
    g.add_argument("--overwrite", action="store_true", help="replace an experiment already in --out")


def _add_memory(sub: Any) -> None:
    d = M.MemoryConfig()
    p = sub.add_parser(
        "memory",
        help="long-lag memory of every cell: adding problem and remember-the-first-symbol",
        description="Train every selected cell on the adding problem and remember-the-first-symbol at several "
        "lengths and seeds. The default size takes about 17 minutes on 2 otherwise idle cores (--jobs 2).",
    )
    _common(p)
    p.add_argument(
        "--cells",
        default=None,
        help=f"comma-separated cells of {','.join(model_config.CELLS)} (default: {','.join(d.cells)})",
    )
    p.add_argument("--adding-lengths", default=None, help="comma-separated T (default 50,100,200,400)")
    p.add_argument("--lags", default=None, help="comma-separated remember-first lags (default 20,50,100)")
    p.add_argument("--seeds", type=int, default=None, help=f"seeds per setting (default {d.seeds})")
    p.add_argument("--steps", type=int, default=None, help=f"training steps per run (default {d.steps})")
    p.add_argument("--max-seconds", type=float, default=d.max_seconds, help="wall-time cap per run (0 = none)")
    p.add_argument("--hidden", type=int, default=d.hidden)
    p.add_argument("--embed", type=int, default=d.embed, help="embedding width (remember-first)")
    p.add_argument("--batch", type=int, default=d.batch)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--warmup", type=int, default=d.warmup)
    p.add_argument("--clip", type=float, default=d.clip, help="global gradient-norm clip (0 = off)")
    p.add_argument("--forget-bias", type=float, default=d.forget_bias, help="initial forget-gate bias")
    p.add_argument("--min-lr-frac", type=float, default=d.min_lr_frac, help="cosine decay to lr*this (1 = constant)")
    p.add_argument("--n-symbols", type=int, default=d.n_symbols, help="remember-first keys (chance 1/N)")
    p.add_argument("--eval-size", type=int, default=None, help=f"held-out sequences (default {d.eval_size})")
    p.add_argument("--quick", action="store_true", help="smoke test: lengths 10,20, 1 seed, 30 steps")


def _add_variants(sub: Any) -> None:
    d = V.VariantsConfig(corpus="stdlib")
    p = sub.add_parser(
        "variants",
        help="Greff-style comparison of the cell variants on a char corpus (lr sweep, seeds, forget-bias ablation)",
        description="Train every variant as a char language model for a fixed number of steps at each learning "
        "rate and seed; report validation nats/char at each variant's best learning rate. The default size (all "
        "16 variants x 3 lrs x 3 seeds) takes about 20 minutes on 2 otherwise idle cores (--jobs 2).",
    )
    _common(p)
    p.add_argument(
        "--corpus",
        default=None,
        help=f"text file, directory, glob, 'stdlib' or 'tinyshakespeare'; first 90%% train, last 10%% validation "
        f"(default: {V.DEFAULT_CORPUS}, shipped with the package)",
    )
    p.add_argument("--max-chars", type=int, default=None, help="read at most this many characters (0 = all)")
    p.add_argument("--variants", default=None, help=f"comma-separated (default: all of {','.join(d.variants)})")
    p.add_argument("--lrs", default=None, help=f"learning rates (default {','.join(f'{x:g}' for x in d.lrs)})")
    p.add_argument("--seeds", type=int, default=None, help=f"seeds per variant and lr (default {d.seeds})")
    p.add_argument("--steps", type=int, default=None, help=f"training steps per run (default {d.steps})")
    for flag, key in (("--hidden", "hidden"), ("--embed", "embed"), ("--batch", "batch"), ("--seq-len", "seq_len")):
        p.add_argument(flag, type=int, default=None, help=f"default {getattr(d, key)}")
    p.add_argument("--warmup", type=int, default=d.warmup)
    p.add_argument("--min-lr-frac", type=float, default=d.min_lr_frac, help="cosine decay to lr*this")
    p.add_argument("--clip", type=float, default=d.clip, help="global gradient-norm clip (0 = off)")
    p.add_argument("--eval-chars", type=int, default=None, help="validation characters scored (0 = all)")
    p.add_argument("--quick", action="store_true", help="smoke test: tiny model, 15 steps, 2 lrs, 1 seed")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="seqpred experiment", description="Benchmark experiments.")
    sub = parser.add_subparsers(dest="experiment", required=True, parser_class=_Parser)
    _add_memory(sub)
    _add_variants(sub)
    return parser


def _names(flag: str, text: str) -> tuple[str, ...]:
    return parse_list(flag, text, str, "names")


def memory_config_from_args(a: argparse.Namespace) -> M.MemoryConfig:
    base: dict[str, Any] = dict(M.QUICK) if a.quick else {}
    if a.cells is not None:
        base["cells"] = _names("--cells", a.cells)
    if a.adding_lengths is not None:
        base["adding_lengths"] = parse_list("--adding-lengths", a.adding_lengths, int, "integers")
    if a.lags is not None:
        base["lags"] = parse_list("--lags", a.lags, int, "integers")
    for key in ("seeds", "steps", "eval_size"):
        if getattr(a, key) is not None:
            base[key] = getattr(a, key)
    keep = ("max_seconds", "hidden", "embed", "batch", "lr", "warmup", "clip", "n_symbols", "forget_bias")
    return replace(M.MemoryConfig(**base), min_lr_frac=a.min_lr_frac, **{k: getattr(a, k) for k in keep})


def variants_config_from_args(a: argparse.Namespace) -> V.VariantsConfig:
    base: dict[str, Any] = dict(V.QUICK) if a.quick else {}
    base["corpus"] = V.DEFAULT_CORPUS if a.corpus is None else a.corpus
    if a.variants is not None:
        base["variants"] = _names("--variants", a.variants)
    if a.lrs is not None:
        base["lrs"] = parse_list("--lrs", a.lrs, float, "numbers")
    for key in ("max_chars", "seeds", "steps", "hidden", "embed", "batch", "seq_len", "eval_chars"):
        if getattr(a, key) is not None:
            base[key] = getattr(a, key)
    return replace(V.VariantsConfig(**base), warmup=a.warmup, min_lr_frac=a.min_lr_frac, clip=a.clip)


def _workers(a: argparse.Namespace) -> int:
    if a.jobs is not None and (isinstance(a.jobs, bool) or a.jobs < 1):
        raise ConfigError(f"--jobs: must be an integer >= 1, got {a.jobs!r}")
    return default_workers() if a.jobs is None else a.jobs


def execute(
    name: str,
    config: Any,
    enumerating: Sequence[str],
    keys: Sequence[Key],
    key_fields: Sequence[str],
    fn: RunFn,
    shared: Any,
    describe: Callable[[Record], str],
    a: argparse.Namespace,
) -> list[Record]:
    """Prepare ``--out``, run the keys not done yet (logging one line each), return the plan's records in
    plan order."""
    workers = _workers(a)
    out = Path(a.out)
    old = prepare_out(out, name, asdict(config), enumerating, a.resume, a.overwrite)
    have = {tuple(r.get(f) for f in key_fields): r for r in old}
    todo = [k for k in keys if k not in have]
    print(
        f"{name} experiment: {len(keys)} runs ({len(keys) - len(todo)} already done), {workers} in parallel"
        + (" [quick smoke test]" if a.quick else ""),
        file=sys.stderr,
        flush=True,
    )
    progress = Progress(len(todo))

    def on_record(rec: Record) -> None:
        append_record(out / RECORDS_FILE, rec)
        have[tuple(rec[f] for f in key_fields)] = rec
        progress.log(describe(rec))

    run_all(fn, shared, todo, workers, on_record)
    return [jsonable(have[k]) for k in keys]


def _write(out: Path, name: str, config: Any, records: list[Record], md: str, extra: dict[str, Any]) -> Path:
    from model.train.checkpoint import write_json_atomic

    doc = {"experiment": name, "config": jsonable(asdict(config)), **extra, "records": records}
    write_json_atomic(out / "results.json", doc)
    (out / "results.md").write_text(md)
    return out / "results.md"


def cmd_memory(a: argparse.Namespace) -> int:
    exp = memory_config_from_args(a)
    keys = M.plan(exp)
    records = execute(
        "memory",
        exp,
        M.ENUMERATING,
        keys,
        M.KEY_FIELDS,
        M.run_one,
        exp,
        lambda r: M.progress_text(M.RunResult.from_record(r), exp.steps),
        a,
    )
    from model.experiments.plots import memory_plot
    from model.experiments.tables import memory_markdown

    results = [M.RunResult.from_record(r) for r in records]
    out = Path(a.out)
    md = "# Memory experiment\n\n" + memory_markdown(exp, results)
    base = {"baselines": {"adding_mse": ADDING_BASELINE_MSE, "remember_first_accuracy": 1.0 / exp.n_symbols}}
    _write(out, "memory", exp, records, md, base)
    return _finish(out, md, memory_plot(exp, results, out / "results.png"))


def cmd_variants(a: argparse.Namespace) -> int:
    exp = variants_config_from_args(a)
    _workers(a)  # a bad --jobs is refused before the corpus is read
    data = V.load_char_data(exp)
    note = (
        f"Corpus {exp.corpus}: {data.train_chars} training / {data.val_chars} validation characters, "
        f"vocabulary {data.vocab_size}."
    )
    records = execute(
        "variants",
        exp,
        V.ENUMERATING,
        V.plan(exp),
        V.KEY_FIELDS,
        V.run_one,
        (exp, data),
        lambda r: V.progress_text(V.VariantResult.from_record(r)),
        a,
    )
    from model.experiments.plots import variants_plot
    from model.experiments.tables import best_lrs, variants_markdown

    results = [V.VariantResult.from_record(r) for r in records]
    out = Path(a.out)
    md = "# Variants experiment\n\n" + variants_markdown(exp, results, V.available_variants(), note)
    extra = {
        "corpus": {"train_chars": data.train_chars, "val_chars": data.val_chars, "vocab_size": data.vocab_size},
        "best_lr": best_lrs(exp, results),
    }
    _write(out, "variants", exp, records, md, extra)
    return _finish(out, md, variants_plot(exp, results, out / "results.png"))


def _finish(out: Path, md: str, png: Path | None) -> int:
    print(md)
    paths = [out / "results.json", out / "results.md"] + ([png] if png is not None else [])
    note = "" if png is not None else " (no results.png: matplotlib is not installed; pip install seqpred[plot])"
    print("wrote " + ", ".join(str(p) for p in paths) + note, file=sys.stderr)
    return 0


EXPERIMENTS = {"memory": cmd_memory, "variants": cmd_variants}


def main_experiment(argv: list[str] | None = None) -> int:
    """``seqpred experiment NAME ...``; ``argv`` excludes ``experiment``. User errors: one line, exit 2."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        ns = build_parser().parse_args(args)
        return EXPERIMENTS[ns.experiment](ns)
    except SeqpredError as e:
        return report_error(e)
    except KeyboardInterrupt:
        print("seqpred: interrupted; finished runs are in records.jsonl (rerun with --resume)", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main_experiment())
