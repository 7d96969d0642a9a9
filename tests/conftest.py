"""Test order: the fast tier (tests not marked slow) runs first, so `python -m pytest -q` reports a
broken build in about a minute before the slow tests (training runs, CLIs) start.

Trained runs that several files read are session fixtures here, trained once per session; a test
that changes such a run works on a copy (`shutil.copytree`).
"""

import types

import pytest


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: item.get_closest_marker("slow") is not None)  # stable: file order otherwise


# A 3-step run of the default preset with everything after training on: whitening, an export with its
# index, and an exact retrieval export. (Raw-pixel baselines off: their 2,352-dim whitening is the
# slowest stage, and tests of the raw-pixel baselines train their own runs.)
TINY_RUN = ["train.epochs=1", "train.steps_per_epoch=3", "model.width=8", "model.embedding_dim=16",
            "eval.every_epoch=false", "export.retrieval=exact"]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """`.root`, `.run_dir` (`root/run`), `.sets` (the config's --set values, the export root under
    `root/exports`) and `.result` (its TrainResult) of the shared tiny run. Read-only."""
    from tfsim import config
    from tfsim.training import stages, train

    root = tmp_path_factory.mktemp("tiny_run")
    sets = TINY_RUN + [f"export.root={root / 'exports'}"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(stages, "MAX_RAW_PIXEL_BYTES", 0)
        result = train(config.load("default", sets), root / "run", verbose=0)
    return types.SimpleNamespace(root=root, run_dir=root / "run", sets=sets, result=result)


# The fast tier stops the run: when a test not marked slow has failed, the slow tier is not started
# (`python -m pytest -q` then ends with the fast tier's failures in about a minute, not an hour).
_fast_failures: list[str] = []


def pytest_runtest_logreport(report):
    if report.failed and "slow" not in report.keywords:
        _fast_failures.append(report.nodeid)


def pytest_runtest_teardown(item, nextitem):
    if (_fast_failures and nextitem is not None and item.get_closest_marker("slow") is None
            and nextitem.get_closest_marker("slow") is not None):
        item.session.shouldstop = (f"{len(_fast_failures)} fast-tier test(s) failed; the slow tier was not started "
                                   "(run it alone with `python -m pytest -q -m slow`)")
