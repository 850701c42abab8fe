"""A rate under stress (a flood, a broadcast storm) against the same rate when calm, on a shared machine.

The lab's transfers are CPU-bound: on a machine whose cores other work also wants, one run's
rate falls by whatever that work took while it ran, and a median of three moves with it (the
machine's load drifts over a test). Such load only ever takes rate away, never adds it, so the
best of several runs is the rate the tunnel can carry in that condition, and the ratio of the
two bests compares the tunnel with itself rather than with the rest of the machine. The runs of
the two conditions are taken in turn, so both see the same stretches of the machine's load.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, ContextManager


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


__all__ = ["RateComparison", "interleaved"]
