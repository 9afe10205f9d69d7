"""Holding back a client that keeps asking to be refused.

A client that ignores Retry-After (a load generator, a flood of bad keys) can turn the event loop into
a refusal machine: under 4x overload goodput fell to ~35% of capacity while the loop answered 503s.
So the first refusal of a run is answered at once, and each further one on the same connection after a
pause that doubles up to Retry-After; the run ends only after a quiet spell (an admitted request
between two refusals does not end it: with 16x overload, restarting at no pause after every admission
kept goodput at ~55%). Every transport with connections (HTTP, gRPC) holds its refusals back this way.
"""

from __future__ import annotations

from hostd.errors import Forbidden, Overloaded, RateLimited, Unauthenticated

#: The refusals held back when a client keeps asking for them.
HELD_BACK = (Overloaded, RateLimited, Unauthenticated, Forbidden)
#: The pause before a client's second refusal in a row; each further one doubles it, up to LONGEST_PAUSE_S.
FIRST_PAUSE_S = 0.01
LONGEST_PAUSE_S = 1.0  # Retry-After
#: A client not refused for this long starts its next run of refusals with no pause again.
QUIET_SPELL_S = 2 * LONGEST_PAUSE_S


class RefusalRun:
    """One client's current run of refusals."""

    __slots__ = ("count", "last")

    def __init__(self) -> None:
        self.count = 0  # refusals in the run
        self.last = 0.0  # when the last one was decided, on the event loop's clock

    def pause_s(self, now: float) -> float:
        """Count one more refusal at ``now``: how long to hold it back (0 for the first of a run)."""
        if now - self.last > QUIET_SPELL_S:
            self.count = 0
        self.count += 1
        self.last = now
        return 0.0 if self.count == 1 else min(LONGEST_PAUSE_S, FIRST_PAUSE_S * 2 ** (self.count - 2))

    def end(self) -> None:
        """The client got in at its rate: its next refusal starts a new run."""
        self.count = 0
