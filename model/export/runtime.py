"""onnxruntime sessions for exported graphs, with the options the benchmarks found best on CPU.

``InferenceSession.run`` is stateless and thread-safe: one session per graph and process is enough.
"""

from __future__ import annotations

import os
from typing import Any


def session_options(threads: int = 1, spinning: bool = True) -> Any:
    """``SessionOptions``: all graph optimizations (fuses Gemm + activation), ``threads`` intra-op threads.

    ``spinning`` keeps idle pool threads busy-waiting between kernels, which pays off for the many small
    kernels of a recurrent step when the cores are not shared with other work; turn it off on a loaded host.
    """
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    so.log_severity_level = 3
    return so


def make_session(path: str | os.PathLike[str] | bytes, threads: int = 1, spinning: bool = True) -> Any:
    """A CPU ``InferenceSession`` for a graph file (or serialized model bytes)."""
    import onnxruntime as ort

    src = path if isinstance(path, bytes) else str(path)
    return ort.InferenceSession(src, session_options(threads, spinning), providers=["CPUExecutionProvider"])
