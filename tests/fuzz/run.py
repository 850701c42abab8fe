"""`make fuzz`: the decoder fuzz targets of tests/unit/test_fuzz_decoders.py, driven with many inputs.

Each target is a hypothesis test; hypothesis's `fuzz_one_input` turns a random buffer into one
example (a batch of inputs) and runs it, so the same strategies and assertions serve the unit
suite's small slice and this long run. Each target gets an equal share of `--seconds` and at
most `--inputs`; the run fails if a target lets anything but the typed error escape (the
failing buffer is printed) or if fewer than `--min-total` inputs were decoded in all.

    python tests/fuzz/run.py --seconds 600 --min-total 1000000 --seed 1
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1] / "unit"), str(Path(__file__).resolve().parents[1])]
os.environ.setdefault("MESHVPN_FUZZ_BATCH", "64")

import test_fuzz_decoders  # noqa: E402  (the targets)


def run_target(target, inputs: int, seconds: float, rng: random.Random) -> tuple[int, float]:
    """Run `target` until it decoded `inputs` inputs or `seconds` passed; how many, and how long."""
    fuzz = target.hypothesis.fuzz_one_input
    start, first = time.monotonic(), test_fuzz_decoders.INPUTS[0]
    examples = 0
    while test_fuzz_decoders.INPUTS[0] - first < inputs and (examples % 64 or time.monotonic() - start < seconds):
        buffer = rng.randbytes(rng.choice((256, 1024, 4096, 16384)))
        try:
            fuzz(buffer)
        except Exception:
            print(f"{target.__name__}: failing buffer {buffer.hex()}", file=sys.stderr)
            raise
        examples += 1
    return test_fuzz_decoders.INPUTS[0] - first, time.monotonic() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=int, default=1_000_000, help="most inputs per target (default 1,000,000)")
    parser.add_argument("--seconds", type=float, default=600.0, help="time budget in all (default 600)")
    parser.add_argument("--min-total", type=int, default=1_000_000, help="fewest inputs in all (default 1,000,000)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    targets = test_fuzz_decoders.TARGETS
    rng = random.Random(args.seed)
    total, elapsed = 0, 0.0
    for index, target in enumerate(targets):
        left = len(targets) - index
        count, took = run_target(target, args.inputs, (args.seconds - elapsed) / left, rng)
        total, elapsed = total + count, elapsed + took
        print(f"{target.__name__:45s} {count:>9,d} inputs {took:7.1f} s {count / max(took, 1e-9):8.0f}/s", flush=True)
    print(f"{'total':45s} {total:>9,d} inputs {elapsed:7.1f} s; only the typed errors escaped")
    if total < args.min_total:
        print(f"fewer than {args.min_total:,d} inputs: give it more --seconds", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
