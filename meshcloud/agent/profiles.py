"""What the ``phone`` profile changes in the node's own parts, in one place (the gossip,
DHT, transport and service presets live with their parts). See docs/phones.md."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from meshcloud.clock import Clock
from meshcloud.revocation import ENFORCE_INTERVAL
from meshcloud.state import config as state_config
from meshcloud.state.config import StateConfig
from meshcloud.state.driver import StateDriver
from meshcloud.state.store import LmdbKv
from meshcloud.transport.base import Transport

PHONE_REVOCATION_CHECK = 15.0
"""Seconds between checks for revoked peers on a phone (a revocation also closes the
revoked node's connections on every other member at once)."""


def revocation_interval(profile: str) -> float:
    return PHONE_REVOCATION_CHECK if profile == "phone" else ENFORCE_INTERVAL


def state_settings(profile: str) -> StateConfig | None:
    """The replicated state's timing (None: the driver's default)."""
    return state_config.phone() if profile == "phone" else None


def open_state(transport: Transport, path: Path, view: Callable[[], frozenset[bytes]],
               clock: Clock, profile: str) -> StateDriver:
    """The node's replicated state (LMDB at ``path``) with the profile's timing."""
    return StateDriver(transport, LmdbKv(path, background_sync=True), view=view,
                       clock=clock, config=state_settings(profile))
