"""Test order and parallelism.

The fast tier (tests not marked slow) runs first, so `python -m pytest -q` reports a broken build in
about a minute before the slow tests (training runs, CLIs) start; a failure there stops the run.

The suite runs on pytest-xdist workers (`-n auto --maxprocesses 4 --dist loadgroup`, set in
pyproject.toml; `-n 0` runs it in one process). Scheduling units: each fast test alone; a slow test
alone when it uses only function- and session-scoped fixtures; otherwise its whole module, in one
worker, so a module fixture (a trained run) is built once. Slow units start longest first (from
tests/durations.json, seconds per unit measured on a 2-core machine) so the two workers end together.

Trained runs that several files read are session fixtures here, built once per suite even with
several workers (a file lock on the workers' shared temporary folder); a test that changes such a
run works on a copy (`shutil.copytree`).
"""

import fcntl
import json
import os
import pickle
import types
from pathlib import Path

import pytest

DURATIONS = Path(__file__).with_name("durations.json")
SLOW = "slow:"  # the xdist group of a slow unit: `slow:<unit>` (test ids may hold "@" themselves, e.g. recall@1)


def _slow(item) -> bool:
    return item.get_closest_marker("slow") is not None


def _unit(item) -> str:
    """The scheduling unit of a test: its module when it uses a module-, class- or package-scoped
    fixture (built once per worker, so the module's tests stay together), else the test itself."""
    info = getattr(item, "_fixtureinfo", None)
    for name in item.fixturenames:
        defs = info.name2fixturedefs.get(name) if info is not None else None
        if defs and defs[-1].scope in ("module", "class", "package"):
            return item.nodeid.split("::")[0]
    return item.nodeid


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which reads the xdist_group marks
def pytest_collection_modifyitems(config, items):
    seconds = json.loads(DURATIONS.read_text()) if DURATIONS.is_file() else {}
    position = {item.nodeid: i for i, item in enumerate(items)}
    units: dict[str, list] = {}
    for item in items:
        units.setdefault(_unit(item), []).append(item)

    def order(item):  # fast first in file order; then slow units, longest first
        if not _slow(item):
            return (0, 0.0, position[item.nodeid])
        unit = _unit(item)
        return (1, -seconds.get(unit, 0.0), position[units[unit][0].nodeid], position[item.nodeid])

    items.sort(key=order)
    for item in items:  # (xdist then names each slow test `<nodeid>@slow:<unit>`: what the scheduler below reads)
        if _slow(item):
            item.add_marker(pytest.mark.xdist_group(SLOW + _unit(item)))


def pytest_collection_finish(session):
    """A worker refuses to run when xdist ignored the groups (module fixtures would be built in every worker)."""
    if os.environ.get("PYTEST_XDIST_WORKER") and session.config.getvalue("loadgroup"):
        ungrouped = [item.nodeid for item in session.items if _slow(item) and "@" + SLOW not in item.nodeid]
        if ungrouped:
            raise pytest.UsageError(f"pytest-xdist did not group {ungrouped[0]} (and {len(ungrouped) - 1} more): "
                                    "this pytest and pytest-xdist do not work together; see setup.cfg's test extra")


# A 3-step run of the default preset with everything after training on: whitening, an export with its
# index, and an exact retrieval export. (Raw-pixel baselines off: their 2,352-dim whitening is the
# slowest stage, and tests of the raw-pixel baselines train their own runs.)
TINY_RUN = ["train.epochs=1", "train.steps_per_epoch=3", "model.width=8", "model.embedding_dim=16",
            "eval.every_epoch=false", "export.retrieval=exact"]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """`.root`, `.run_dir` (`root/run`), `.sets` (the config's --set values, the export root under
    `root/exports`) and `.result` (its TrainResult) of the shared tiny run. Read-only."""
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):  # each worker's folder sits in the run's shared one
        shared = shared.parent
    root, done = shared / "tiny_run", shared / "tiny_run.pickle"
    sets = TINY_RUN + [f"export.root={root / 'exports'}"]
    with open(shared / "tiny_run.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # the first worker trains; the others wait, then read its result
        if not done.is_file():
            from tfsim import config  # lazy: conftest is imported before TensorFlow is wanted
            from tfsim.training import stages, train  # lazy: as above

            with pytest.MonkeyPatch.context() as patch:
                patch.setattr(stages, "MAX_RAW_PIXEL_BYTES", 0)
                result = train(config.load("default", sets), root / "run", verbose=0)
            done.write_bytes(pickle.dumps(result))
        result = pickle.loads(done.read_bytes())
    return types.SimpleNamespace(root=root, run_dir=root / "run", sets=sets, result=result)


# The fast tier stops the run: when a test not marked slow has failed, the slow tier is not started
# (`python -m pytest -q` then ends with the fast tier's failures in about a minute, not an hour).
_fast_failures: list[str] = []


def pytest_runtest_logreport(report):
    if report.failed and "slow" not in report.keywords:
        _fast_failures.append(report.nodeid)
    if "@" + SLOW in report.nodeid:  # xdist's controller sees each slow test as `<nodeid>@slow:<unit>`
        unit = report.nodeid.split("@" + SLOW, 1)[1]
        _unit_seconds[unit] = _unit_seconds.get(unit, 0.0) + report.duration


def pytest_runtest_teardown(item, nextitem):
    if (_fast_failures and nextitem is not None and item.get_closest_marker("slow") is None
            and nextitem.get_closest_marker("slow") is not None):
        item.session.shouldstop = (f"{len(_fast_failures)} fast-tier test(s) failed; the slow tier was not started "
                                   "(run it alone with `python -m pytest -q -m slow`)")


def pytest_xdist_make_scheduler(config, log):
    """xdist's loadgroup scheduling, except that after a fast-tier failure no slow unit is handed out."""
    from xdist.scheduler import LoadGroupScheduling  # lazy: xdist's controller alone calls this

    class FastTierFirst(LoadGroupScheduling):
        def _assign_work_unit(self, node):
            scope = next(iter(self.workqueue))
            # the next unit is slow: a group `slow:<module>`, or one test `<nodeid>@slow:<nodeid>` (xdist keeps
            # the whole node id as the scope when the id ends in "]")
            if _fast_failures and (scope.startswith(SLOW) or "@" + SLOW in scope):
                _skipped_slow_units.update(self.workqueue)
                self.workqueue.clear()
                node.shutdown()
                return
            super()._assign_work_unit(node)

    return FastTierFirst(config, log)


_skipped_slow_units: set[str] = set()


def pytest_terminal_summary(terminalreporter):
    if _skipped_slow_units:
        terminalreporter.write_line(
            f"{len(_fast_failures)} fast-tier test(s) failed; the slow tier ({len(_skipped_slow_units)} units) was not "
            "started (run it alone with `python -m pytest -q -m slow`)", red=True)



# `TFSIM_RECORD_DURATIONS=1 python -m pytest -q` (with workers) rewrites tests/durations.json from the
# run: the seconds of each slow unit, setup and teardown included, which orders the next runs.
_unit_seconds: dict[str, float] = {}


def pytest_sessionfinish(session):
    if os.environ.get("TFSIM_RECORD_DURATIONS") and _unit_seconds and not os.environ.get("PYTEST_XDIST_WORKER"):
        DURATIONS.write_text(json.dumps({u: round(t, 1) for u, t in sorted(_unit_seconds.items(),
                                                                            key=lambda kv: -kv[1])}, indent=1) + "\n")
