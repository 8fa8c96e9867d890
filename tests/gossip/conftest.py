"""Full-size gossip checks (``@pytest.mark.slow``) run only when asked: ``-m slow``."""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = str(Path(__file__).parent)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if "slow" in (config.getoption("-m") or ""):
        return
    skip = pytest.mark.skip(reason="full-size simulation: run with -m slow")
    for item in items:
        if "slow" in item.keywords and str(item.path).startswith(HERE):
            item.add_marker(skip)
