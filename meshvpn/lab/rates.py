"""A rate under stress (a flood, a broadcast storm) against the same rate when calm, on a shared machine.

The lab's transfers are CPU-bound: on a machine whose cores other work also wants, one run's
rate falls by whatever that work took while it ran, and a median of three moves with it (the
machine's load drifts over a test). Such load only ever takes rate away, never adds it, so the
best of several runs is the rate the tunnel can carry in that condition, and the ratio of the
two bests compares the tunnel with itself rather than with the rest of the machine. The runs of
the two conditions are taken in turn, so both see the same stretches of the machine's load.

On a machine where others' load comes and goes within seconds, two bests of a few runs each
still depend on which runs happened to meet a quiet moment. A stress that can be switched on
and off at once (a broadcast storm) is better measured within one flow (`alternated`): the
stress goes on and off every fraction of a second, and the flow's bytes in the stressed
stretches are compared with those in the calm ones between them, so load that lasts longer
than a stretch falls on both alike and cancels.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass, field
from typing import Callable, ContextManager, Sequence


@dataclass
class RateComparison:
    """Rates in Mbit/s measured calm and under stress, and how they compare."""

    calm: list[float] = field(default_factory=list)
    stressed: list[float] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        """The best stressed rate over the best calm rate (0 before both were measured)."""
        if not self.calm or not self.stressed or max(self.calm) <= 0:
            return 0.0
        return max(self.stressed) / max(self.calm)

    def __str__(self) -> str:
        def rates(values: list[float]) -> str:
            return ", ".join(f"{value:.0f}" for value in values)

        return f"{self.ratio:.0%} (best of stressed [{rates(self.stressed)}] over best of calm [{rates(self.calm)}])"


def interleaved(measure: Callable[[], float], stress: Callable[[], ContextManager[object]],
                rounds: int = 3) -> RateComparison:
    """`rounds` calm runs of `measure`, each followed by one inside `stress()`, then a last calm run."""
    comparison = RateComparison()
    for _ in range(rounds):
        comparison.calm.append(measure())
        with stress():
            comparison.stressed.append(measure())
    comparison.calm.append(measure())
    return comparison


@dataclass
class Alternation:
    """A flow's bytes and seconds in the stretches with a stress on and in those with it off."""

    calm: list[tuple[int, float]] = field(default_factory=list)
    stressed: list[tuple[int, float]] = field(default_factory=list)

    @staticmethod
    def mbit_per_s(stretches: list[tuple[int, float]]) -> float:
        seconds = sum(duration for _, duration in stretches)
        return sum(count for count, _ in stretches) * 8 / seconds / 1e6 if seconds > 0 else 0.0

    @property
    def ratio(self) -> float:
        """The stressed stretches' rate over the calm ones' (0 before both were measured)."""
        calm = self.mbit_per_s(self.calm)
        return self.mbit_per_s(self.stressed) / calm if calm > 0 else 0.0

    def __str__(self) -> str:
        return (f"{self.ratio:.0%} ({self.mbit_per_s(self.stressed):.0f} Mbit/s in {len(self.stressed)} stressed "
                f"stretches over {self.mbit_per_s(self.calm):.0f} in {len(self.calm)} calm ones)")


def bytes_at(progress: Sequence[tuple[float, int]], when: float) -> float:
    """The bytes a flow had delivered at `when`, between its two nearest samples."""
    i = bisect_left(progress, when, key=lambda sample: sample[0])
    if i == 0:
        return float(progress[0][1])
    if i == len(progress):
        return float(progress[-1][1])
    (t0, b0), (t1, b1) = progress[i - 1], progress[i]
    return b0 + (b1 - b0) * (when - t0) / (t1 - t0) if t1 > t0 else float(b1)


def alternated(progress: Sequence[tuple[float, int]], bursts: Sequence[tuple[float, float]],
               settle: float) -> Alternation:
    """Split a flow's `progress` (`(time, bytes so far)`) into the stressed stretches `bursts`
    (`(start, end)`, in order) and the calm ones between two bursts, each without its first
    `settle` seconds (the change of condition takes a moment to reach the flow)."""
    result = Alternation()

    def add(stretches: list[tuple[int, float]], start: float, end: float) -> None:
        """A stretch the flow covered from its start to its end: a flow that had not begun or
        had already ended then says nothing of its rate."""
        if progress and progress[0][0] <= start < end <= progress[-1][0]:
            stretches.append((round(bytes_at(progress, end) - bytes_at(progress, start)), end - start))

    for index, (start, end) in enumerate(bursts):
        add(result.stressed, start + settle, end)
        if index + 1 < len(bursts):
            add(result.calm, end + settle, bursts[index + 1][0])
    return result


__all__ = ["Alternation", "RateComparison", "alternated", "bytes_at", "interleaved"]
