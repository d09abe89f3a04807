"""The schedules that decode one frame of image tokens, by the name the command lines, sessions
and the demo take (no torch here: ``--schedule``'s choices are read before it loads).

* ``naive``: one token per forward pass, in raster order (rows x cols passes).
* ``diagonal`` (arXiv 2503.14070): row r starts once row r-1 has ``window``
  tokens; every active row then advances one token per pass, so a frame takes
  ``cols + (rows - 1) * window`` passes. A row's first input is a stand-in: the
  previous frame's token at the cell just before it (the end of the row above),
  written at that cell's position, as the paper does. Queries only ever see keys
  that have been written: the cache holds written tokens only, and a query sees
  the keys at or before its own position.
* ``published-diagonal``: the same passes, made as the published MineWorld code
  makes them, so that its tokens are reproduced: its zero-initialised cache and
  plain raster causal mask let a query also see the frame's slots not written
  yet (zero keys and values: each adds ``exp(0)`` to the softmax's denominator
  and nothing to its output), and every stand-in comes from the prompt frame
  (the first frame of the prompt), not the previous one.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class Schedule:
    """The order a frame's tokens are made in, and what the diagonal ones read."""

    rows_in_parallel: bool  # diagonal: each row ``window`` tokens behind the row above
    stand_ins_from_prompt: bool = False  # a row's first input from the prompt frame
    sees_unwritten: bool = False  # queries also see the frame's unwritten (zero) slots


SCHEDULES = {
    "naive": Schedule(rows_in_parallel=False),
    "diagonal": Schedule(rows_in_parallel=True),
    "published-diagonal": Schedule(rows_in_parallel=True, stand_ins_from_prompt=True,
                                   sees_unwritten=True),
}
