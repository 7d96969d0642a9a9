"""Test order: the fast tier (tests not marked slow) runs first, so `python -m pytest -q` reports a
broken build in about a minute before the slow tests (training runs, CLIs) start."""


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: item.get_closest_marker("slow") is not None)  # stable: file order otherwise
