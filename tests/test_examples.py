"""Each example under examples/ runs its --quick mode to completion, writes its figure and prints its
summary (these are what CI runs; all of them together stay under 3 minutes on 2 cores).

Run as subprocesses (a fresh interpreter, as a user would), each in a temporary directory so the PNG
lands there; the repository's examples/ directory is found from this file.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytest.importorskip("sklearn")  # the digits data ships with scikit-learn
pytest.importorskip("matplotlib")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# script, PNG it writes, a line its summary must print
EXAMPLES = [
    ("csbp_chaotic_loss.py", "csbp_chaotic_loss.png", "BPTT + chaotic loss"),
    ("stbp_tdbn_resnet19.py", "stbp_tdbn_resnet19.png", "| tdbn |"),
    ("asgl_width_sweep.py", "asgl_width_sweep.png", "| Width (α) | SG | ASGL |"),
    ("bpsa_timesteps.py", "bpsa_timesteps.png", "| T | plain surrogate BPTT |"),
    ("custom_surrogate.py", "custom_surrogate.png", "| | sigmoid (α = 4) | sigmoid_mix (learnable α) |"),
]


@pytest.mark.parametrize("script,png,summary", EXAMPLES, ids=[e[0] for e in EXAMPLES])
def test_example_quick(tmp_path, script, png, summary):
    env = dict(os.environ)
    # The package from this checkout, not whatever else is installed; the Triton interpreter
    # setting of tests/conftest.py is irrelevant here (the examples run the C++ or the reference).
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("MPLBACKEND", "Agg")
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "examples", script), "--quick", "--device", "cpu"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=170)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{script} --quick failed:\n{out[-4000:]}"
    assert summary in proc.stdout, f"{script} did not print its summary ({summary!r}):\n{proc.stdout[-3000:]}"
    assert f"saved {png}" in proc.stdout
    path = tmp_path / png
    assert path.is_file() and path.stat().st_size > 1000, f"{png} missing or empty"
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n", f"{png} is not a PNG"
