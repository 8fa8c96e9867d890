"""DhtConfig: documented defaults, presets derived from one base, bad values refused."""

from __future__ import annotations

import pytest

from dht.config import DhtConfig


def test_defaults_follow_the_paper_and_libp2p():
    config = DhtConfig()
    assert (config.k, config.alpha, config.max_find_count) == (20, 3, 40)
    assert config.record_limits.max_ttl_ms == 48 * 3600 * 1000


@pytest.mark.parametrize("preset", [DhtConfig.lan, DhtConfig.wan, DhtConfig.local,
                                    DhtConfig.phone])
def test_presets_are_valid(preset):
    config = preset()
    assert config.peer_republish_interval < config.peer_record_ttl


def test_phone_is_a_client_with_short_lived_records():
    phone = DhtConfig.phone()
    assert not phone.serving
    assert phone.peer_record_ttl < DhtConfig().peer_record_ttl
    assert phone.refresh_interval > DhtConfig().refresh_interval


@pytest.mark.parametrize("changes", [
    {"k": 0}, {"alpha": 0}, {"max_find_count": 10}, {"request_timeout": 0},
    {"peer_republish_interval": 4000.0}, {"provider_republish_interval": 90_000.0},
    {"provider_record_ttl": 50 * 3600.0},
])
def test_bad_values_are_refused(changes):
    with pytest.raises(ValueError):
        DhtConfig(**changes)
