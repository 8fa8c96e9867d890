"""The replace delay of lost database nodes: the profile's, or the environment's."""

from __future__ import annotations

import pytest

from apps.db.service import LOCAL_REPLACE_AFTER, REPLACE_AFTER, replace_after
from meshcloud.errors import ConfigError


def test_the_profile_sets_it_when_the_environment_does_not(monkeypatch):
    monkeypatch.delenv("MESHCLOUD_DB_REPLACE_AFTER", raising=False)
    assert replace_after(local=True) == LOCAL_REPLACE_AFTER == 30.0
    assert replace_after(local=False) == REPLACE_AFTER == 300.0
    monkeypatch.setenv("MESHCLOUD_DB_REPLACE_AFTER", " ")
    assert replace_after(local=True) == LOCAL_REPLACE_AFTER


@pytest.mark.parametrize("local", [True, False])
def test_the_environment_overrides_either_profile(monkeypatch, local):
    monkeypatch.setenv("MESHCLOUD_DB_REPLACE_AFTER", "6.5")
    assert replace_after(local=local) == 6.5


@pytest.mark.parametrize("raw", ["soon", "0", "-3", "nan", "inf", "1e12"])
def test_a_bad_value_is_one_clear_error(monkeypatch, raw):
    monkeypatch.setenv("MESHCLOUD_DB_REPLACE_AFTER", raw)
    with pytest.raises(ConfigError, match=r"MESHCLOUD_DB_REPLACE_AFTER.*positive number"):
        replace_after(local=True)
