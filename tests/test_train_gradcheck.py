"""``seqpred gradcheck``: every cell passes, the JSON report, a bad flag, and a wrong gradient is caught."""

from __future__ import annotations

import json

import numpy as np
import pytest

from model.cli import main
from model.config import CELLS
from model.network import Params, State, param_shapes
from model.train import gradcheck as G

#: (cell, layers): every cell at its default depth, and more than one cell stacked.
CASES = [(c, G.default_layers(c)) for c in CELLS] + [("lstm", 2), ("gru", 2), ("fgr", 2)]


def _run(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as e:  # argparse's own errors
        return int(e.code or 0)


@pytest.mark.parametrize(("cell", "layers"), CASES)
def test_every_cell_passes(cell: str, layers: int) -> None:
    res = G.check(cell, layers, np.random.default_rng(0))
    assert res.ok and res.max_rel_error < G.TOLERANCE, G.table(res)
    cfg = G.problem(cell, layers, np.random.default_rng(0))[0].cfg
    states = [f"layer{l}/{s}" for l in range(layers) for s in (("h0", "c0") if cfg.has_c else ("h0",))]
    assert [b.name for b in res.blocks] == [*param_shapes(cfg), *states]


def test_depth_gated_defaults_to_two_layers() -> None:
    assert G.default_layers("depth-gated") == 2 and G.default_layers("lstm") == 1


def test_cli_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["gradcheck", "--cell", "gru", "--json", "--seed", "3"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(res) == {"cell", "layers", "tolerance", "blocks", "max_rel_error"}
    assert res["cell"] == "gru" and res["layers"] == 1 and res["tolerance"] == 1e-6
    assert "layer0/R" in res["blocks"] and "embed" in res["blocks"]
    assert res["max_rel_error"] == max(res["blocks"].values()) < 1e-6


def test_cli_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["gradcheck", "--cell", "depth-gated"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("gradcheck depth-gated, 2 layers")
    assert any(line.split()[:2] == ["layer1/D", "8"] and line.endswith("ok") for line in out)
    assert out[-1].startswith("max rel error") and out[-1].endswith(": ok")


@pytest.mark.parametrize(
    ("args", "needle"),
    [(["--cell", "lsmt"], "--cell: unknown cell 'lsmt'"), (["--cell", "lstm", "--layers", "0"], "--layers")],
)
def test_bad_flag_is_one_line_and_exit_2(args: list[str], needle: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(["gradcheck", *args]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("seqpred: error: ") and needle in err[0], err
    assert captured.out == ""


def test_a_wrong_gradient_is_caught(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """The check can fail: one block's analytic gradient off by 1e-4 of its scale is reported, and exit is 1."""
    real = G.analytic_grads

    def wrong(pb: G.Problem, p: Params) -> tuple[Params, State]:
        grads, ds0 = real(pb, p)
        g = grads["layer0/R"].copy()
        g[0, 0] += 1e-4 * np.abs(g).max()
        return {**grads, "layer0/R": g}, ds0

    monkeypatch.setattr(G, "analytic_grads", wrong)
    res = G.check("lstm", 1, np.random.default_rng(0))
    bad = {b.name for b in res.blocks if b.rel_error >= G.TOLERANCE}
    assert bad == {"layer0/R"} and not res.ok and res.max_rel_error > G.TOLERANCE
    assert main(["gradcheck", "--cell", "lstm"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in out if line.endswith("FAIL")] == ["layer0/R"]
    assert out[-1].startswith("max rel error") and "FAIL (1 of 8 blocks)" in out[-1]
    assert main(["gradcheck", "--cell", "lstm", "--json"]) == 1
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["max_rel_error"] > 1e-6
