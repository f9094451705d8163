"""Recurrent cells (pure step math) by ``--cell`` name; see :mod:`model.cells.base`. May import: nonlin, errors."""

from __future__ import annotations

from model.cells.base import Cell
from model.cells.clockwork import CLOCKWORK
from model.cells.depth import DEPTH_GATED
from model.cells.fgr import FGR
from model.cells.greff import NFG, NIAF, NIG, NOAF, NOG
from model.cells.gru import GRU, GRU_LBR
from model.cells.lstm import CIFG, LSTM, PEEPHOLE
from model.cells.rnn import RNN
from model.errors import ConfigError

_CELLS: dict[str, Cell] = {
    c.name: c for c in (RNN, LSTM, PEEPHOLE, CIFG, NIG, NFG, NOG, NIAF, NOAF, DEPTH_GATED, GRU, GRU_LBR, FGR, CLOCKWORK)
}


def get_cell(name: str) -> Cell:
    """The cell called ``name``; an unknown name raises :class:`ConfigError` listing the known ones."""
    try:
        return _CELLS[name]
    except KeyError:
        raise ConfigError(f"cell: unknown cell {name!r}; choose one of {', '.join(_CELLS)}") from None


__all__ = ["Cell", "get_cell"]
