"""``seqpred score --engine ray``: the same scoring as the local engine, as a Ray Data pipeline.

1. The driver cuts INPUT into :class:`~service.scoring.inputs.Part` s (:func:`split_input`: ``--part-bytes`` of a
   file, cut at line starts so that ids stay line numbers; a slice of a directory's files; a ``.gz`` is one part).
2. ``ray.data.from_items(parts).map_batches(read_parts)``: Ray tasks read the parts with the project's own
   :class:`~service.scoring.inputs.InputReader` (the same ids, ``--resume`` skips and malformed-input messages) into
   Arrow rows ``{key, tokens, unknown, error, skipped}``, about ``--window-tokens`` tokens per block.
3. ``.map_batches(ScoreActor, compute=ActorPoolStrategy(size=N), num_cpus=1)``: N actors, each holding one
   ``sequence.onnx`` session with one intra-op thread, score a block with :class:`~service.scoring.scorer.Scorer`
   and format each record with the local engine's :class:`~service.scoring.records.RecordFormatter` (a JSON line,
   or Parquet columns).
4. The driver iterates the blocks **in input order** (``preserve_order``) and writes them with the local engine's
   writers, so output, ``--resume`` and ``--on-error`` behave as with ``--engine local``.

``ray`` is imported only here, when the engine runs (it is the optional extra ``seqpred[ray]``). INPUT and
``--model`` must be readable at the same path on every node of the cluster. See docs/scoring.md, *On Ray*.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from model.errors import ConfigError
from service.scoring.inputs import STDIN, BadInput, Encoder, InputReader, Item, Part, input_format, list_files
from service.scoring.parquet import ParquetWriter, import_pyarrow, record_schema, to_table
from service.scoring.records import RecordFormatter, RecordWriter, dumps
from service.scoring.scorer import WINDOW_SEQS, Scorer
from service.scoring.summary import Malformed, Summary

#: Input bytes per read task (``--part-bytes``): the unit of parallel reading.
PART_BYTES = 8 << 20
RAY_MISSING = "--engine ray needs Ray: pip install 'seqpred[ray]'"
#: Records in input order (``preserve_order``); False only to measure what order costs (bench/score_speed.py).
PRESERVE_ORDER = True
_META = ["_item", "_error", "_skipped", "_tokens", "_total"]


def import_ray() -> Any:
    """``ray`` with ``ray.data``, or the one-line error saying how to install it."""
    try:
        import ray
        import ray.data  # the pipeline below
    except ImportError:
        raise ConfigError(RAY_MISSING) from None
    return ray


def split_input(path: str, kind: str, part_bytes: int) -> tuple[list[Part], int]:
    """INPUT (``kind`` from :func:`input_format`) cut into parts of about ``part_bytes`` each, in input order, and
    its size in bytes."""
    if kind == "dir":
        root = Path(path)
        parts, names, size, total = [], [], 0, 0
        for p in list_files(root):
            names.append(p.relative_to(root).as_posix())
            size += p.stat().st_size
            if size >= part_bytes:
                parts.append(Part(files=tuple(names)))
                total, names, size = total + size, [], 0
        return ([*parts, Part(files=tuple(names))] if names or not parts else parts), total + size
    if path.endswith(".gz"):
        return [Part()], os.path.getsize(path)  # a gzip stream cannot be entered in the middle: one task reads it
    parts, start, first, pos = [], 0, 1, 0
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            pos += len(raw)
            if pos - start >= part_bytes:
                parts.append(Part(start, pos, first))
                start, first = pos, lineno + 1
    return ([*parts, Part(start, None, first)] if pos > start or not parts else parts), pos


@dataclass(frozen=True)
class Job:
    """Everything the read tasks and the scoring actors need (shipped to them by Ray)."""

    model_dir: str
    input: str  # absolute: workers do not share the driver's working directory
    fmt: str
    name: str  # INPUT as given, for messages
    encoder: Encoder
    done: frozenset[str]
    per_token: bool
    top_k: int
    allow_unknown: bool
    chunk_len: int
    batch_tokens: int
    max_batch: int
    intra_op_threads: int
    window_tokens: int
    parquet: bool


def read_parts(batch: Any, job: Job) -> Iterator[Any]:
    """Read stage: each part's sequences as Arrow rows, a table per window; malformed inputs are rows too."""
    pa = import_pyarrow()
    skip = job.done.__contains__ if job.done else None
    for text in batch.column("part").to_pylist():
        spec = json.loads(text)
        part = Part(**{**spec, "files": None if spec["files"] is None else tuple(spec["files"])})
        reader = InputReader(job.input, job.fmt, job.encoder, skip=skip, part=part, name=job.name)
        rows: dict[str, list[Any]] = {"key": [], "unknown": [], "error": [], "skipped": []}
        seqs: list[np.ndarray] = []
        tokens = 0
        for x in itertools.chain(reader, [None]):  # None: the end, where the count of --resume skips is added
            bad = isinstance(x, BadInput)
            ids = x.ids if isinstance(x, Item) else np.zeros(0, np.int64)
            if x is not None or reader.skipped:
                rows["key"].append(json.dumps(x.id) if isinstance(x, Item) else None)
                rows["unknown"].append(x.unknown if isinstance(x, Item) else 0)
                rows["error"].append(str(x) if bad else None)
                rows["skipped"].append(reader.skipped if x is None else 0)
                seqs.append(ids)
                tokens += len(ids)
            if seqs and (x is None or tokens >= job.window_tokens or len(seqs) >= WINDOW_SEQS):
                offsets = np.cumsum([0] + [len(s) for s in seqs], dtype=np.int64)
                flat = pa.array(np.concatenate(seqs) if tokens else np.zeros(0, np.int64), pa.int64())
                cols = {k: pa.array(v) for k, v in rows.items()}
                cols["tokens"] = pa.LargeListArray.from_arrays(pa.array(offsets), flat)
                yield pa.table(cols)
                rows, seqs, tokens = {k: [] for k in rows}, [], 0


class ScoreActor:
    """Scoring stage: one ``sequence.onnx`` session per actor; rows in, records (and tallies) out, in order."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self.scorer = Scorer(
            job.model_dir,
            top_k=job.top_k,
            threads=1,
            intra_op_threads=job.intra_op_threads,
            chunk_len=job.chunk_len,
            batch_tokens=job.batch_tokens,
            max_batch=job.max_batch,
        )
        tok = self.scorer.tokenizer
        assert tok is not None
        texts = [tok.token_text(i) for i in range(tok.vocab_size)]
        self.fmt = RecordFormatter(texts, job.per_token, job.top_k, job.allow_unknown)
        self.schema = record_schema(job.per_token, job.top_k, job.allow_unknown) if job.parquet else None

    def __call__(self, t: Any) -> Any:
        pa = import_pyarrow()
        keys = t.column("key").to_pylist()
        unknown = t.column("unknown").to_pylist()
        col = t.column("tokens").combine_chunks()
        offsets, flat = col.offsets.to_numpy(), col.values.to_numpy()
        items = [Item(i, json.loads(k), flat[offsets[i] : offsets[i + 1]], unknown[i]) for i, k in enumerate(keys) if k]
        records: list[Any] = [None] * len(keys)
        ntok, total = [0] * len(keys), [0.0] * len(keys)
        for item, s in self.scorer.score_stream(items, window_tokens=max(1, len(flat))):
            rec = self.fmt(item, s)
            records[item.index] = rec if self.schema is not None else dumps(rec)
            ntok[item.index], total[item.index] = s.num_tokens, s.total_logprob
        out = to_table(records, self.schema) if self.schema is not None else pa.table({"line": records})
        meta = [[k is not None for k in keys], t.column("error"), t.column("skipped"), ntok, total]
        for name, values in zip(_META, meta, strict=True):
            out = out.append_column(name, values if isinstance(values, pa.ChunkedArray) else pa.array(values))
        return out


def run_on_ray(
    args: argparse.Namespace,
    model_dir: Path,
    encoder: Encoder,
    writer: RecordWriter | ParquetWriter,
    summary: Summary,
    malformed: Malformed,
    progress: Callable[[int], None],
) -> None:
    """Score INPUT on Ray (``args`` of ``seqpred score``), writing records in input order with ``writer``."""
    if args.input == STDIN:
        raise ConfigError("--engine ray: INPUT - (stdin) cannot be read by Ray tasks; write it to a file first")
    if args.part_bytes < 1 or args.actors < 0:
        raise ConfigError(f"--part-bytes/--actors: must be >= 1/>= 0, got {args.part_bytes}/{args.actors}")
    kind = input_format(args.input, args.format)
    parts, size = split_input(args.input, kind, args.part_bytes)
    ray = import_ray()
    job = Job(
        str(model_dir.resolve()), os.path.abspath(args.input), args.format, args.input, encoder,
        frozenset(writer.done), args.per_token, args.top_k, args.on_unknown != "error", args.chunk_len,
        args.batch_tokens, args.max_batch, args.intra_op_threads, args.window_tokens, args.out_format == "parquet",
    )  # fmt: skip
    started = not ray.is_initialized()
    logging.getLogger("ray.data").setLevel(logging.ERROR)  # its per-run INFO lines; errors still show
    if started:
        # Ray runs its workers at nice 15; the local engine runs at the caller's priority, and so do the actors of
        # an instance started here (this has no effect on a cluster that is already running).
        os.environ.setdefault("RAY_worker_niceness", "0")
        try:
            ray.init(address=args.ray_address, include_dashboard=False, logging_level=logging.ERROR)
        except (ConnectionError, ValueError, RuntimeError) as e:  # none there, a bad address, another Ray version
            why = " ".join(str(e).split())[:300] or type(e).__name__
            raise ConfigError(f"--ray-address: cannot connect to {args.ray_address!r} ({why})") from None
    ctx = ray.data.DataContext.get_current()
    saved = (ctx.execution_options.preserve_order, ctx.target_max_block_size, ctx.enable_progress_bars)
    try:
        ctx.execution_options.preserve_order = PRESERVE_ORDER  # input order, streamed (see docs/scoring.md)
        ctx.target_max_block_size = max(job.window_tokens * 8, 4096)  # blocks of about a window of int64 ids
        ctx.enable_progress_bars = False
        cpus = int(ray.cluster_resources().get("CPU", 0))
        actors = args.actors or max(1, cpus // job.intra_op_threads)
        if actors * job.intra_op_threads > cpus:  # Ray would wait for them for ever
            raise ConfigError(
                f"--actors: {actors} actor(s) of {job.intra_op_threads} CPU(s) each (--intra-op-threads) need more "
                f"than the {cpus} CPUs of the cluster"
            )
        actors = min(actors, max(1, -(-size // job.window_tokens)))  # no more actors than blocks (~1 byte/token)
        items = [{"part": json.dumps(asdict(p))} for p in parts]
        ds = ray.data.from_items(items, override_num_blocks=len(items))
        # Readers take no CPU of their own (the actors have them all) and a few suffice: one reads ~40 actors' worth
        readers = max(1, actors // 4)
        pool = {"compute": ray.data.TaskPoolStrategy(size=readers)} if hasattr(ray.data, "TaskPoolStrategy") else {}
        ds = ds.map_batches(
            read_parts, batch_size=1, batch_format="pyarrow", fn_kwargs={"job": job}, num_cpus=0,
            **(pool or {"concurrency": readers}),  # (Ray 2.44 has no TaskPoolStrategy)
        )  # fmt: skip
        ds = ds.map_batches(
            ScoreActor, fn_constructor_kwargs={"job": replace(job, done=frozenset())},  # (the ids: readers only)
            batch_size=None, batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=job.intra_op_threads,
        )  # fmt: skip
        for block in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            if not _consume(block, writer, summary, malformed, progress):
                break
    finally:
        ctx.execution_options.preserve_order, ctx.target_max_block_size, ctx.enable_progress_bars = saved
        if started:
            ray.shutdown()


def _consume(
    block: Any,
    writer: RecordWriter | ParquetWriter,
    summary: Summary,
    malformed: Malformed,
    progress: Callable[[int], None],
) -> bool:
    """Write one block's records in order and count them; False when ``--on-error fail`` stops the run here."""
    is_item, errors, skipped = (block.column(c).to_pylist() for c in _META[:3])
    ntok, total = block.column("_tokens").to_numpy(), block.column("_total").to_numpy()
    keep: list[int] = []

    def flush() -> None:
        if not keep:
            return
        if isinstance(writer, ParquetWriter):
            writer.write_table(block.take(keep).drop_columns(_META))
        else:
            writer.write(block.column("line").take(keep).to_pylist())
        for i in keep:
            summary.add(int(ntok[i]), float(total[i]))
        progress(len(keep))
        keep.clear()

    for i in range(block.num_rows):
        if is_item[i]:
            keep.append(i)
        elif errors[i] is not None:
            flush()
            if not malformed(errors[i]):
                return False
        else:
            summary.resumed += skipped[i]
    flush()
    return True


__all__ = ["PART_BYTES", "RAY_MISSING", "Job", "ScoreActor", "import_ray", "read_parts", "run_on_ray", "split_input"]
