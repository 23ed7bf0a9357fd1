"""The per-layer search (ann2snn/tune.py): one pass over the network stopped before each layer
(sim.engine.PausedRun) against a run of the network per layer (the reference: what the search did before),
in one process on the same model and data. Prints each form's time for `ann2snn.convert(MODEL, data=DATA)`
(calibration, search, final conversion), the ratio, and whether the two chose the same settings.

usage: python benchmarks/bench_search.py MODEL DATA
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import ann2snn  # noqa: E402
import ann2snn.tune as tune  # noqa: E402
from common import load_line, machine_lines  # noqa: E402


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    model, data = sys.argv[1:]
    print(f"# bench_search: python benchmarks/bench_search.py {model} {data}")
    print("\n".join(machine_lines()))
    one_pass = tune._paused_run
    times, choices = {}, {}
    for form, paused in (("one pass", one_pass), ("run per layer", lambda *args: None)):
        tune._paused_run = paused
        start = time.perf_counter()
        choices[form] = ann2snn.convert(model, data=data).choices
        times[form] = time.perf_counter() - start
        print(f"{form}: convert {times[form]:.1f} s, {len(choices[form])} layers searched", flush=True)
    a, b = choices["one pass"], choices["run per layer"]
    same = sum(x.setting == y.setting and (x.charge is None) == (y.charge is None) for x, y in zip(a, b))
    worst = max((abs(x.error - y.error) for x, y in zip(a, b)), default=0.0)
    print(f"ratio (run per layer / one pass): {times['run per layer'] / times['one pass']:.2f}x; same settings "
          f"on {same} of {len(a)} layers, largest difference of a measured error {worst:.2e}")
    print(load_line())
    return 0


if __name__ == "__main__":
    sys.exit(main())
