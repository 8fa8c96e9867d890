"""How long our HTTP servers (the API + UI, and S3) wait for a client: the numbers and
the body budget, with no I/O (the trio side is :mod:`meshcloud.kit.guard`).

Two bounds, both per connection:

* **headers**: a connection must deliver a request's complete headers within
  ``header_timeout`` seconds of opening, or of the end of its previous response (an idle
  keep-alive connection is closed after the same time). Bytes that trickle in do not
  extend it.
* **body**: once the headers are in, the server waits at most ``body_timeout`` seconds
  for each next piece of the body, and in all at most ``body_timeout`` seconds plus one
  second per ``body_min_rate`` bytes received. Only the time the server spends waiting
  for the client counts (not the time the application spends storing what it got), so a
  slow disk never cuts a fast client, and a client that trickles a byte now and then is
  cut after about ``body_timeout`` seconds.

A request that runs out of time is answered (when the application still can) and its
connection closed; the server keeps serving every other connection.
"""

from __future__ import annotations

from dataclasses import dataclass

from meshcloud.errors import ConfigError


@dataclass(frozen=True)
class HttpLimits:
    header_timeout: float = 30.0
    """Seconds for a request's headers to arrive (also the keep-alive idle time)."""
    body_timeout: float = 20.0
    """Seconds the server waits for the next piece of a request body."""
    body_min_rate: float = 500.0
    """Bytes per second a body must average, beyond its first ``body_timeout`` seconds."""

    def __post_init__(self) -> None:
        for name in ("header_timeout", "body_timeout", "body_min_rate"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not value > 0 or value == float("inf"):
                raise ConfigError(f"{name} must be a positive number of "
                                  f"{'bytes per second' if name == 'body_min_rate' else 'seconds'}"
                                  f", not {value!r}")


DEFAULT_LIMITS = HttpLimits()


class BodyBudget:
    """The waiting time a request body has left.

    Call :meth:`allowance` before waiting for the next piece, then :meth:`on_wait` with the
    time waited and the bytes that came; :attr:`expired` turns true (for good) when a wait
    used up the allowance without the body arriving.
    """

    def __init__(self, limits: HttpLimits) -> None:
        self.limits = limits
        self.received = 0
        self.waited = 0.0
        self.expired = False

    def credit(self) -> float:
        """Total waiting time earned so far."""
        return self.limits.body_timeout + self.received / self.limits.body_min_rate

    def allowance(self) -> float:
        """Seconds the next wait may last (0 once expired)."""
        if self.expired:
            return 0.0
        return max(0.0, min(self.limits.body_timeout, self.credit() - self.waited))

    def on_wait(self, seconds: float, received: int) -> None:
        """A wait of ``seconds`` ended with ``received`` body bytes."""
        self.waited += max(0.0, seconds)
        self.received += max(0, received)

    def on_timeout(self, seconds: float) -> None:
        """A wait used its whole allowance and nothing came."""
        self.waited += max(0.0, seconds)
        self.expired = True
