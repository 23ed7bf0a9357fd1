"""Mutated exported spiking models (tests/fuzzing.py: byte flips, truncations, renamed nodes, reshaped or
retyped tensors, edited metadata, ...) through `simulate` with both engines: each is simulated or refused
with one of our errors, never a crash. The long run is `python tests/fuzz_long.py --spiking`."""
from pathlib import Path

import fuzzing

CASES = 400


def test_mutated_spiking_models_are_simulated_or_refused(tmp_path: Path):
    data = fuzzing.write_data(tmp_path)
    seeds = fuzzing.spiking_seeds(tmp_path, data)
    crashes = []
    for case in fuzzing.cases(CASES, seed=7):
        outcome = fuzzing.run_spiking_case(case, tmp_path, data, seeds)
        if outcome.crash:
            crashes.append(f"{case}: {outcome.error.splitlines()[0]}")
    assert not crashes, "\n".join(crashes[:10])
