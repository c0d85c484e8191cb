"""Transaction keys: which transaction a message belongs to (RFC 3261 §17.1.3, §17.2.3).

``str(key)`` is a stable storage key (the Redis key is derived from it).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from typing import Final, Literal

from sipcore.sip.builders import MAGIC_COOKIE
from sipcore.sip.message import Request, Response

Role = Literal["client", "server"]


def is_rfc3261_branch(branch: str | None) -> bool:
    """A branch with the magic cookie and an identifier after it (RFC 3261 §8.1.1.7).

    A bare cookie (RFC 4475 §3.2.1, badbranch) does not identify a transaction.
    """
    return branch is not None and branch.startswith(MAGIC_COOKIE) and len(branch) > len(MAGIC_COOKIE)


def default_port(transport: str) -> int:
    return 5061 if transport.upper() in ("TLS", "WSS") else 5060


_COOKIE_LENGTH: Final = len(MAGIC_COOKIE)


@dataclass(frozen=True, slots=True)
class TransactionKey:
    """What identifies a transaction.

    Client keys (§17.1.3): the top Via branch and the CSeq method.
    Server keys (§17.2.3): the top Via branch and sent-by, and the method, with
    ACK counted as INVITE. Requests without an RFC 3261 branch fall back to the
    RFC 2543 rule: Request-URI, To tag, From tag, Call-ID, CSeq and top Via (the
    CSeq method is ``method``), kept as a digest in ``legacy``. An ACK carries the
    To tag of the response, not of its INVITE: :meth:`server_keys_for` lists the
    keys it may belong to.
    """

    role: Role
    method: str
    branch: str = ""
    sent_by: str = ""
    legacy: str = ""

    def __str__(self) -> str:
        if self.legacy:
            return f"{self.role[0]}|2543|{self.legacy}|{self.method}"
        if self.role == "server":
            return f"s|{self.branch}|{self.sent_by}|{self.method}"
        return f"c|{self.branch}|{self.method}"

    @property
    def is_rfc2543(self) -> bool:
        return bool(self.legacy)

    @classmethod
    def for_client(cls, message: Request | Response) -> TransactionKey:
        """The client transaction a request starts, or a response belongs to (§17.1.3)."""
        cseq = message.cseq
        if cseq is None:
            raise ValueError("a message without CSeq belongs to no transaction")
        return cls("client", cseq.method, branch=message.branch or "")

    @classmethod
    def for_server(cls, request: Request) -> TransactionKey:
        """The server transaction ``request`` starts or belongs to (§17.2.3).

        An ACK maps to its INVITE's transaction; a CANCEL has its own (see
        :meth:`cancelled_by` for the INVITE it cancels).
        """
        # The key is read off the headers once per change of them (the layer, the
        # transaction and its retransmissions ask again); the method and the URI
        # are the request's own attributes, so they are part of what is remembered.
        headers = request.headers
        memo = headers._memo
        method = request.method
        remembered = memo.get("server-key")
        if remembered is not None and remembered[0] == method and remembered[1] == request.uri:
            key: TransactionKey = remembered[2]
            return key
        via_seeds = headers._seeds.get("via")
        if not via_seeds:
            raise ValueError("a request without Via belongs to no transaction")
        top_via = via_seeds[0]  # groups: protocol, version, transport, host, port, params
        params = top_via[6]
        if params.startswith(";branch=") and params.find(";", 8) < 0 and '"' not in params:
            branch: str | None = params[8:]  # the branch and nothing else, as Message.branch reads it
        else:
            branch = request.branch
        key_method = "INVITE" if method == "ACK" else method
        # §17.2.3: an RFC 3261 branch (the magic cookie and more, §8.1.1.7) and the sent-by.
        if branch is not None and len(branch) > _COOKIE_LENGTH and branch.startswith(MAGIC_COOKIE):
            port = top_via[5] or default_port(top_via[3])
            # TransactionKey("server", key_method, branch, sent_by), through the slots (below).
            key = _new_key(cls)
            _set_role(key, "server")
            _set_method(key, key_method)
            _set_branch(key, branch)
            _set_sent_by(key, f"{top_via[4].lower()}:{port}")
            _set_legacy(key, "")
        else:
            key = cls("server", key_method, legacy=_rfc2543_digest(request, request.to_tag))
        memo["server-key"] = (method, request.uri, key)
        return key

    @classmethod
    def server_keys_for(cls, request: Request) -> tuple[TransactionKey, ...]:
        """Every key of a server transaction ``request`` may belong to, in lookup order.

        One key, except for an RFC 2543 ACK (§17.2.3): its To tag is that of the
        response, which is its INVITE's own To tag for an INVITE inside a dialog,
        and a tag the INVITE did not carry otherwise. The transaction then checks
        the ACK's To tag against the response it sent.
        """
        key = cls.for_server(request)
        if not key.legacy or request.method != "ACK" or request.to_tag is None:
            return (key,)
        return (key, replace(key, legacy=_rfc2543_digest(request, None)))

    @classmethod
    def cancelled_by(cls, cancel: Request) -> TransactionKey:
        """The INVITE server transaction a CANCEL targets (RFC 3261 §9.2)."""
        if cancel.method != "CANCEL":
            raise ValueError(f"{cancel.method} is not a CANCEL")
        return replace(cls.for_server(cancel), method="INVITE")


# for_server builds a key for every request received (the hot path). The generated
# __init__ of a frozen dataclass sets each field through object.__setattr__; the
# slots' own descriptors do the same stores without the frozen check, several
# times faster. The instance is complete
# (every field set) before anyone sees it, and frozen from then on.
_new_key = object.__new__
_slots = TransactionKey.__dict__  # the slots' member descriptors
_set_role = _slots["role"].__set__
_set_method = _slots["method"].__set__
_set_branch = _slots["branch"].__set__
_set_sent_by = _slots["sent_by"].__set__
_set_legacy = _slots["legacy"].__set__


def _rfc2543_digest(request: Request, to_tag: str | None) -> str:
    """RFC 3261 §17.2.3's fallback: Request-URI, To tag, From tag, Call-ID, CSeq
    number and top Via (the CSeq method is the key's ``method``).

    Each part is length-prefixed, so no two different tuples share a digest input.
    """
    cseq = request.cseq
    via_seeds = request.headers._seeds.get("via") or []
    top_via = via_seeds[0][0] if via_seeds else ""
    parts = (
        request.uri,
        "" if to_tag is None else f"tag={to_tag}",
        request.from_tag or "",
        request.call_id or "",
        str(cseq.number if cseq else ""),
        top_via,
    )
    text = "".join(f"{len(part)}:{part}" for part in parts)
    return hashlib.sha1(text.encode("utf-8", "surrogateescape"), usedforsecurity=False).hexdigest()[:32]
