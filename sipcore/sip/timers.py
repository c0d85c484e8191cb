"""Timer values and transport facts the transaction machines and their snapshots share.

Both :mod:`sipcore.sip.transaction` and :mod:`sipcore.sip.snapshot` build on this
module, and it imports neither of them.

A clock reading (``now``) is seconds as a float, finite and within
``±MAX_CLOCK``. Every interval is at least the spacing of floats at
``MAX_CLOCK``, so ``now + interval > now`` for every accepted reading: a timer
re-armed from ``now`` is never due at the same ``now`` again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

# 2**40 s is about 35,000 years of epoch seconds; the float spacing there is 2**-12 s.
MAX_CLOCK: Final = 2.0**40
MIN_INTERVAL: Final = math.ulp(MAX_CLOCK)
MAX_INTERVAL: Final = 2.0**32  # about 136 years: every deadline stays finite
MAX_DEADLINE: Final = MAX_CLOCK + MAX_INTERVAL

RELIABLE_TRANSPORTS: Final = frozenset({"TCP", "TLS", "SCTP", "TLS-SCTP", "WS", "WSS"})


def check_clock(now: float) -> float:
    """``now`` if it is a usable clock reading; ValueError otherwise (NaN, infinite, out of range)."""
    if not -MAX_CLOCK <= now <= MAX_CLOCK:  # False for NaN too
        raise ValueError(f"now must be a finite clock reading within ±{MAX_CLOCK:.0f} s, got {now!r}")
    return now


def usable_interval(value: object) -> bool:
    """A finite, positive interval that moves any accepted clock reading forward."""
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and MIN_INTERVAL <= value <= MAX_INTERVAL
    )


@dataclass(frozen=True, slots=True)
class Timings:
    """RFC 3261 §17.1.1.1 and Table 4 values, in seconds."""

    t1: float = 0.5  # RTT estimate
    t2: float = 4.0  # cap on non-INVITE request and INVITE response retransmissions
    t4: float = 5.0  # how long a message may stay in the network
    timer_d: float = 32.0  # at least 32 s on unreliable transports (§17.1.1.2)
    trying_delay: float = 0.2  # send 100 Trying unless the TU answered first (§17.2.1)
    proceeding_guard: float = 180.0  # like Timer C (§16.6): no INVITE client lives forever

    def __post_init__(self) -> None:
        for name in ("t1", "t2", "t4", "timer_d", "trying_delay", "proceeding_guard"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise ValueError(f"Timings.{name} must be positive, got {value!r}")
            if not usable_interval(value):
                raise ValueError(
                    f"Timings.{name} must be finite and between {MIN_INTERVAL} s (below it now + "
                    f"interval == now for some clock readings) and {MAX_INTERVAL:.0f} s, got {value!r}"
                )
        if self.t2 < self.t1:
            raise ValueError(f"Timings.t2 ({self.t2}) must not be below t1 ({self.t1})")
        if self.timer_d < 32.0:
            raise ValueError(
                f"Timings.timer_d must be at least 32 s (RFC 3261 §17.1.1.2), got {self.timer_d}"
            )
        if not usable_interval(self.transaction_timeout):
            raise ValueError(f"Timings.t1 ({self.t1}) makes 64*T1 longer than {MAX_INTERVAL:.0f} s")

    @property
    def transaction_timeout(self) -> float:
        """64*T1: Timers B, F, H, J, L and M."""
        return 64 * self.t1


# Timings are immutable: every transaction without timings of its own shares these
# (validating a new Timings costs more than creating a transaction).
DEFAULT_TIMINGS: Final = Timings()


@dataclass(frozen=True, slots=True)
class Timer:
    deadline: float  # absolute, in the caller's clock (epoch seconds in production)
    interval: float  # the backoff interval it was armed with


# A timer is armed for nearly every event. The generated __init__ of a frozen
# dataclass sets each field through object.__setattr__; the slots' own descriptors
# make the same stores about twice as fast. The instance is complete before anyone
# sees it, and frozen from then on.
_new = object.__new__
_set_deadline = Timer.__dict__["deadline"].__set__
_set_interval = Timer.__dict__["interval"].__set__


def new_timer(deadline: float, interval: float) -> Timer:
    """``Timer(deadline, interval)``, for the hot path."""
    timer: Timer = _new(Timer)
    _set_deadline(timer, deadline)
    _set_interval(timer, interval)
    return timer


@dataclass(frozen=True, slots=True)
class TransportInfo:
    """The transport facts a transaction needs: reliability (which decides the
    retransmission timers) and the two addresses."""

    protocol: str
    reliable: bool
    local: tuple[str, int]
    remote: tuple[str, int]

    def __post_init__(self) -> None:
        object.__setattr__(self, "protocol", self.protocol.upper())
        object.__setattr__(self, "local", (str(self.local[0]), int(self.local[1])))
        object.__setattr__(self, "remote", (str(self.remote[0]), int(self.remote[1])))
        for side, (_, port) in (("local", self.local), ("remote", self.remote)):
            if not 0 <= port <= 65535:
                raise ValueError(f"{side} port {port} is not 0-65535")
        if self.reliable != (self.protocol in RELIABLE_TRANSPORTS):
            raise ValueError(
                f"{self.protocol} is {'' if self.protocol in RELIABLE_TRANSPORTS else 'not '}reliable"
            )
