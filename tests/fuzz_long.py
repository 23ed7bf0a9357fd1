"""The long fuzz run (not collected by pytest): python tests/fuzz_long.py [--cases N] [--seed S] [--spiking].

Mutates the seed corpus (tests/fuzz_corpus) N times, runs each mutated model through inspect, calibrate,
convert and simulate, and reports how many inputs it tried, how they ended, and every crash (an exception
other than our Ann2SnnError) with its case id and traceback. The address space is capped so that an
enormous allocation fails as MemoryError (a crash we report) instead of exhausting the machine, and each
case has a time limit (a hang is reported as a crash). Exit status 1 if anything crashed or hung."""
from __future__ import annotations

import argparse
import collections
import resource
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import fuzzing  # noqa: E402


class Hang(Exception):
    pass


def _alarm(signum, frame):
    raise Hang("the case ran past its time limit")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--time-limit", type=int, default=60, help="seconds per case")
    parser.add_argument("--memory-limit-gb", type=float, default=8.0)
    parser.add_argument("--spiking", action="store_true", help="mutate the exported spiking models instead and "
                        "run simulate on them with both engines")
    args = parser.parse_args()
    limit = int(args.memory_limit_gb * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    signal.signal(signal.SIGALRM, _alarm)
    stages: collections.Counter = collections.Counter()
    crashes: dict[str, list[fuzzing.Outcome]] = collections.defaultdict(list)
    slowest = (0.0, "")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        data = fuzzing.write_data(folder)
        seeds = fuzzing.spiking_seeds(folder, data) if args.spiking else {}
        for done, case in enumerate(fuzzing.cases(args.cases, args.seed)):
            if done and done % 1000 == 0:
                print(f"{done} cases, {sum(len(v) for v in crashes.values())} crashes, "
                      f"{time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
            signal.alarm(args.time_limit)
            try:
                outcome = fuzzing.run_spiking_case(case, folder, data, seeds) if args.spiking \
                    else fuzzing.run_case(case, folder, data)
            except Hang as exc:
                outcome = fuzzing.Outcome(case, "", f"Hang: {exc}", True, float(args.time_limit))
            finally:
                signal.alarm(0)
            for leftover in folder.glob(f"{case.seed_model}.{case.kind}.*"):
                leftover.unlink()
            stages["converted and simulated" if outcome.stage == "simulate" else
                   "refused: " + outcome.error.split(":")[0] if not outcome.crash else "CRASH"] += 1
            if outcome.crash:
                crashes[outcome.error.split("\n")[0][:120]].append(outcome)
            slowest = max(slowest, (outcome.seconds, str(case)))
    seconds = time.perf_counter() - start
    what = "spiking models" if args.spiking else "models"
    print(f"tried {args.cases} mutated {what} (seed {args.seed}) in {seconds:.0f} s; slowest case "
          f"{slowest[0]:.2f} s ({slowest[1]})")
    for outcome, count in sorted(stages.items(), key=lambda kv: -kv[1]):
        print(f"  {count:6d}  {outcome}")
    print(f"crashes (not an Ann2SnnError): {sum(len(v) for v in crashes.values())}")
    for message, outcomes in crashes.items():
        print(f"--- {len(outcomes)}x {message}  (first: {outcomes[0].case})")
        print(outcomes[0].traceback[-2000:])
    return 1 if crashes else 0


if __name__ == "__main__":
    sys.exit(main())
