"""Static checks, for the type checker only, that every built-in cell meets the
protocols it claims (``gradpaths._protocols``); nothing here runs at import.

A cell that drops a protocol member, or changes its signature, fails ``mypy``
here rather than in a user's code.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gradpaths._cells import GRU, LSTM, RNN
    from gradpaths._lru import LRU
    from gradpaths._mingated import MinGRU, MinLSTM
    from gradpaths._protocols import ClosedFormCell, GaugedCell, RoutedCell, SaturatingCell
    from gradpaths._slstm import SLSTM
    from gradpaths._stack import Stack

    def _closed_form(cell: ClosedFormCell) -> None: ...

    def _routed(cell: RoutedCell) -> None: ...

    def _saturating(cell: SaturatingCell) -> None: ...

    def _gauged(cell: GaugedCell) -> None: ...

    def _builtin(lstm: LSTM, gru: GRU, rnn: RNN, slstm: SLSTM, mingru: MinGRU,
                 minlstm: MinLSTM, lru: LRU, stack: Stack) -> None:
        _closed_form(lstm)
        _closed_form(gru)
        _closed_form(rnn)
        _closed_form(slstm)
        _closed_form(mingru)
        _closed_form(minlstm)
        _closed_form(lru)
        _routed(stack)  # closed form only when every layer has one: checked at run time
        _saturating(lstm)
        _saturating(gru)
        _saturating(rnn)
        _saturating(slstm)
        _saturating(mingru)
        _saturating(minlstm)
        _gauged(slstm)
        # a stack declares gauge directions when a layer does: checked at run time
