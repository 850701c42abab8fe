"""Hypothesis strategies for the decoder fuzzers: valid inputs, as they are or a few edits off.

Random bytes or text almost never get past a decoder's first check, so a fuzzer fed only those
never reaches the path where the input is accepted, nor the checks near it. `mutated` starts
from a valid input and makes up to three small edits (replace, insert or delete a piece) and
maybe cuts the end, so every fuzzer sees accepted inputs, near misses and garbage. Each fuzzer
records with `hypothesis.event` which way an input went; `--hypothesis-show-statistics` shows it.
"""

from __future__ import annotations

from typing import TypeVar

from hypothesis import strategies as st

T = TypeVar("T", bytes, str)


@st.composite
def mutated(draw: st.DrawFn, valid: st.SearchStrategy[T], piece: st.SearchStrategy[T] | None = None) -> T:
    """A value of `valid` with up to three edits of a `piece` each, and maybe its end cut off."""
    data = draw(valid)
    if piece is None:
        piece = st.text(max_size=3) if isinstance(data, str) else st.binary(max_size=3)
    for _ in range(draw(st.integers(0, 3))):
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(piece) + data[at + 1:]
    if draw(st.booleans()):
        data = data[:draw(st.integers(0, len(data)))]
    return data
