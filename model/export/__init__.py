"""ONNX export: a trained run becomes a model directory that onnxruntime serves. May import: train and below.

Public API::

    export_run(run_dir, out_dir, precision="fp32", *, overwrite=False) -> Path
    load_model_dir(path) -> ModelDir          manifest parsed, every graph's sha256 verified
    make_session(path, threads=1) -> onnxruntime.InferenceSession   with the recommended options

Modules, one concept each: ``builder`` (named graph construction), ``weights`` (parameter checks, gate
groups, the folded embedding), ``cells`` (the step dispatcher over ``emitters/``, one module per cell family that
writes its step as explicit ops), ``step`` and ``sequence``
(the two graphs), ``signature`` (their interface), ``precision`` (fp16, int8), ``manifest`` (model.json),
``export`` (the atomic write), ``runtime`` (session options), ``native`` (reference graphs built from ONNX's
own LSTM/GRU/RNN operators, for tests and benchmarks only).
"""

from model.export.export import build_graphs, export_model, export_run
from model.export.manifest import FORMAT_VERSION, PRECISIONS, ModelDir, load_model_dir
from model.export.runtime import make_session, session_options

__all__ = [
    "FORMAT_VERSION",
    "PRECISIONS",
    "ModelDir",
    "build_graphs",
    "export_model",
    "export_run",
    "load_model_dir",
    "make_session",
    "session_options",
]
