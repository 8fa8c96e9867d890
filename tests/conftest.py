"""Settings for the whole suite."""

from __future__ import annotations

from hypothesis import settings

# Property tests judge results, not speed: on a busy machine (every core loaded, as users'
# machines are) a single example can take longer than hypothesis's 200 ms default
# deadline, which would fail a correct test.
settings.register_profile("meshcloud", deadline=None)
settings.load_profile("meshcloud")
