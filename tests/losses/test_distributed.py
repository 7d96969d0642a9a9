"""Losses under MirroredStrategy (2 logical CPUs, fresh process) match single-device gradients."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tfsim.losses import LOSSES, supports_cross_replica

pytestmark = pytest.mark.slow  # trains models / runs CLIs (see pyproject.toml)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def results():
    proc = subprocess.run([sys.executable, "-m", "tests.losses.distributed_check"], cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


CASES = [(name, cross) for name in LOSSES for cross in ((True, False) if supports_cross_replica(name) else (False,))]


def test_every_registered_loss_is_checked(results):
    assert sorted(k for k in results if k != "scaled_adam") == sorted(f"{n}/cross_replica={c}" for n, c in CASES)


def test_scaled_adam_under_mirrored_strategy(results):
    r = results["scaled_adam"]
    assert r["update_scale"] > 1e-3
    assert r["max_abs_diff"] <= 1e-6 + 1e-4 * r["update_scale"], r
    assert sum(k.endswith(":proxies") for k in r["ratios"]) == 1 and len(r["ratios"]) == 5
    for path, ratio in r["ratios"].items():  # only the proxies move 10x as far
        assert ratio == pytest.approx(10.0 if path.endswith(":proxies") else 1.0, rel=1e-3), (path, ratio)


@pytest.mark.parametrize("name,cross", CASES)
def test_mirrored_update_matches_single_device(results, name, cross):
    r = results[f"{name}/cross_replica={cross}"]
    assert r["update_scale"] > 1e-4  # the step does something
    assert r["max_abs_diff"] <= 1e-5 + 1e-4 * r["update_scale"], r
