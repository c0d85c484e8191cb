"""What the node answers: a dial plan of rules matched on method and Request-URI user.

Pure: no Django, no I/O. The ``DialPlanRule`` model is the staff-edited source
(``sipcore.models``); the node loads it into a :class:`DialPlan` of frozen
:class:`Rule` values and matches each new request against it, first rule first.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final


@dataclass(frozen=True, slots=True)
class Rule:
    """One line of the dial plan.

    ``ring_delay``: seconds before 180 Ringing (None: no 180). ``final_status``:
    the final answer (None: none, the call rings until CANCEL or Timer C).
    ``answer_delay``: seconds, from the request, before the final answer.
    A 2xx to an INVITE carries an SDP answer.
    """

    name: str
    method: str = "INVITE"  # "*" matches every method
    user_pattern: str = ".*"  # a regular expression matched against the whole Request-URI user
    ring_delay: float | None = 0.0
    final_status: int | None = 200
    reason: str = ""
    answer_delay: float = 0.0
    retry_after: int | None = None
    _compiled: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.final_status is not None and not 200 <= self.final_status <= 699:
            raise ValueError(f"rule {self.name!r}: final status {self.final_status} is not 200-699")
        if self.ring_delay is not None and self.ring_delay < 0:
            raise ValueError(f"rule {self.name!r}: ring delay must not be negative")
        if self.answer_delay < 0:
            raise ValueError(f"rule {self.name!r}: answer delay must not be negative")
        try:
            compiled = re.compile(self.user_pattern)
        except re.error as exc:
            raise ValueError(f"rule {self.name!r}: user pattern {self.user_pattern!r}: {exc}") from exc
        object.__setattr__(self, "_compiled", compiled)

    def matches(self, method: str, user: str) -> bool:
        return self.method in ("*", method) and self._compiled.fullmatch(user) is not None


# The demo plan `manage.py seed_demo` writes into every fresh database.
DEMO_RULES: Final = (
    Rule("busy", user_pattern="busy", ring_delay=None, final_status=486, reason="Busy Here"),
    Rule(
        "unavailable",
        user_pattern="unavailable",
        ring_delay=None,
        final_status=503,
        reason="Service Unavailable",
        retry_after=60,
    ),
    Rule("noanswer", user_pattern="noanswer", ring_delay=0.0, final_status=None),
    Rule("answer", user_pattern=".*", ring_delay=0.0, final_status=200, reason="OK"),
)

# When no rule matches an INVITE (an empty plan): ring, then answer.
FALLBACK_RULE: Final = Rule("fallback", method="*")


@dataclass(frozen=True, slots=True)
class DialPlan:
    rules: tuple[Rule, ...] = ()

    @classmethod
    def of(cls, rules: Iterable[Rule]) -> DialPlan:
        return cls(tuple(rules))

    def match(self, method: str, user: str) -> Rule | None:
        """The first rule for ``method`` and ``user``; None when none applies."""
        for rule in self.rules:
            if rule.matches(method, user):
                return rule
        return None
