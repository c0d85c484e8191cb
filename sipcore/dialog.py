"""Requests inside a dialog this node is part of (RFC 3261 §12.2.1.1), for the runtime's TUs.

Just enough dialog state to end a session with BYE: the UAS core when its 2xx
never gets an ACK (§13.3.1.4), the client endpoint for a 2xx that came from a
second fork after the first final response (§13.2.2.4). Built from the INVITE
and the 2xx, so nothing has to be kept for it beyond what the caller holds.
"""

from __future__ import annotations

from collections.abc import Sequence

from sipcore.sip import Headers, NameAddress, Request, Response, new_branch


def _route(entry: NameAddress) -> str:
    return f"<{entry.uri}>"


def in_dialog_request(
    method: str,
    *,
    remote_target: str,
    local: str,
    remote: str,
    call_id: str,
    cseq: int,
    route_set: Sequence[str],
    protocol: str,
    via_address: tuple[str, int],
) -> Request:
    """§12.2.1.1: Request-URI the remote target, From/To the local/remote URIs with their tags,
    the dialog's Call-ID, the next local CSeq, Route the route set (loose routing)."""
    host, port = via_address
    shown = f"[{host}]" if ":" in host else host
    fields = Headers()
    fields.add("Via", f"SIP/2.0/{protocol} {shown}:{port};branch={new_branch()};rport")
    fields.add("Max-Forwards", "70")
    fields.add("From", local)
    fields.add("To", remote)
    fields.add("Call-ID", call_id)
    fields.add("CSeq", f"{cseq} {method}")
    for route in route_set:
        fields.add("Route", route)
    fields.add("Content-Length", "0")
    return Request(method, remote_target, fields)


def uas_bye(invite: Request, to_tag: str, protocol: str, via_address: tuple[str, int]) -> Request:
    """The BYE a UAS sends in the dialog its 2xx to ``invite`` created (§12.1.1: the route set
    is the Record-Route in order, the remote target the INVITE's Contact; our CSeq space is
    new, so it starts at 1)."""
    contact = invite.contact
    to = invite.headers.get("To") or ""
    return in_dialog_request(
        "BYE",
        remote_target=contact[0].uri if contact else invite.uri,
        local=to if ";tag=" in to.lower() else f"{to};tag={to_tag}",
        remote=invite.headers.get("From") or "",
        call_id=invite.call_id or "",
        cseq=1,
        route_set=[_route(entry) for entry in invite.record_route],
        protocol=protocol,
        via_address=via_address,
    )


def uac_bye(invite: Request, response: Response, protocol: str, via_address: tuple[str, int]) -> Request:
    """The BYE a UAC sends in the dialog ``response`` (a 2xx to ``invite``) created (§12.1.2:
    the route set is the Record-Route reversed, the remote target the 2xx's Contact)."""
    contact = response.contact
    cseq = invite.cseq
    return in_dialog_request(
        "BYE",
        remote_target=contact[0].uri if contact else invite.uri,
        local=invite.headers.get("From") or "",
        remote=response.headers.get("To") or "",
        call_id=invite.call_id or "",
        cseq=(cseq.number if cseq is not None else 0) + 1,
        route_set=[_route(entry) for entry in reversed(response.record_route)],
        protocol=protocol,
        via_address=via_address,
    )
