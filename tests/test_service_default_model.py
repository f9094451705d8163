"""The shipped default model completes Python sensibly (checked with onnxruntime on its step graph)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from model.data.tokenizers import tokenizer_from_dict
from model.export import load_model_dir

DEFAULT = Path(__file__).resolve().parents[1] / "service" / "default_model"


def _next_token_probs(prompt: str) -> dict[str, float]:
    md = load_model_dir(DEFAULT)  # verifies every graph's sha256 against the manifest
    tok = tokenizer_from_dict(md.manifest["tokenizer"])
    sess = ort.InferenceSession(str(DEFAULT / "sequence.onnx"), providers=["CPUExecutionProvider"])
    ids = tok.encode(prompt)[None, :]
    feeds: dict[str, np.ndarray] = {"tokens": ids, "lengths": np.array([ids.shape[1]], dtype=np.int64)}
    for inp in sess.get_inputs()[2:]:
        feeds[inp.name] = np.zeros((1, inp.shape[1]), dtype=np.float32)
    names = [o.name for o in sess.get_outputs()]
    out = dict(zip(names, sess.run(None, feeds), strict=True))
    p = np.exp(out["next_logprobs"][0])
    return {tok.token_text(i): float(p[i]) for i in np.argsort(-p)[:5]}


def test_default_model_completes_python() -> None:
    top = _next_token_probs("class Point:\n    def __init__(self")
    best = max(top, key=lambda k: top[k])
    assert best in {",", ")"}, top
    assert top.get(",", 0) + top.get(")", 0) > 0.5, top
