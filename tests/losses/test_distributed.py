"""Losses under MirroredStrategy (2 logical CPUs, fresh process) match single-device gradients."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tfsim.losses import LOSSES, input_kind, supports_cross_replica

pytestmark = pytest.mark.slow  # trains models / runs CLIs (see pyproject.toml)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def results():
    proc = subprocess.run([sys.executable, "-m", "tests.losses.distributed_check"], cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


CASES = [(name, cross) for name in LOSSES for cross in ((True, False) if supports_cross_replica(name) else (False,))]


MEMORY_LOSSES = [name for name in LOSSES if input_kind(name) == "embeddings" and supports_cross_replica(name)]


def test_every_registered_loss_is_checked(results):
    assert sorted(k for k in results if k != "scaled_adam" and not k.endswith("/memory")) == sorted(
        f"{n}/cross_replica={c}" for n, c in CASES)
    assert sorted(k[:-len("/memory")] for k in results if k.endswith("/memory")) == sorted(MEMORY_LOSSES)
    assert len(MEMORY_LOSSES) == 8


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


@pytest.mark.parametrize("name", MEMORY_LOSSES)
def test_cross_batch_memory_under_mirrored_strategy_equals_one_device(results, name):
    """Four steps with a memory of 40 (24-image global batches: it wraps at the second step, the
    first is the warm-up): the two replicas' weights and their memory equal one device's."""
    r = results[f"{name}/memory"]
    assert r["update_scale"] > 1e-3
    assert r["max_abs_diff"] <= 1e-5 + 1e-4 * r["update_scale"], r
    assert r["memory_max_abs_diff"] <= 1e-5, r
    assert r["replicas_memory_max_abs_diff"] <= 1e-6, r  # both replicas' copies hold the same memory
    assert r["memory"]["filled"] == 40 and r["memory"]["next_slot"] == 4 * 24 % 40 and r["memory"]["steps"] == 4
