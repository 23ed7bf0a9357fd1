import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

sys.path.insert(0, str(Path(__file__).parent))
# tests are laid out like the code; some reuse a sibling room's builders and CLI helpers (test_cli.invoke)
for room in ("cli", "rewrites", "rewrites/passes", "sim"):
    sys.path.append(str(Path(__file__).parent / room))

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "fmnist_cnn"


def run_ort(model, feeds):
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


@pytest.fixture
def rng():
    return np.random.default_rng(0)
