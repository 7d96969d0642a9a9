"""Losses under MirroredStrategy (2 logical CPUs, fresh process) match single-device gradients."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def results():
    proc = subprocess.run([sys.executable, "-m", "tests.losses.distributed_check"], cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", ["triplet_semihard", "triplet_hard", "lifted_struct", "multi_similarity",
                                  "contrastive", "binomial_deviance"])
@pytest.mark.parametrize("cross", [True, False])
def test_mirrored_update_matches_single_device(results, name, cross):
    r = results[f"{name}/cross_replica={cross}"]
    assert r["update_scale"] > 1e-4  # the step does something
    assert r["max_abs_diff"] <= 1e-5 + 1e-4 * r["update_scale"], r
