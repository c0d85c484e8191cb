"""Send one SIP request and print the final response: ``manage.py sipsend sip:ping@127.0.0.1:5060``.

Exit status: 0 for a 2xx, 1 for another final response, 2 when none came (Timer B/F).
"""

from __future__ import annotations

import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from sipcore.endpoint import RequestFailed, client_endpoint
from sipcore.node import new_event_loop
from sipcore.sip import Response, Timings


class Command(BaseCommand):
    help = "Send a SIP request (OPTIONS by default) to a URI and print the final response."

    def add_arguments(self, parser):  # type: ignore[no-untyped-def]
        parser.add_argument("uri", help="e.g. sip:ping@127.0.0.1:5060 or sip:[::1]:5060;transport=tcp")
        parser.add_argument("--method", "-X", default="OPTIONS")
        parser.add_argument("--transport", choices=["udp", "tcp"], default=None, help="default: the URI's")
        parser.add_argument("--header", "-H", action="append", default=[], help='"Name: value", repeatable')
        parser.add_argument("--bind", default=None, help="local address (default 127.0.0.1, or ::1 for IPv6)")
        parser.add_argument("--t1", type=float, default=0.5, help="RFC 3261 T1: Timer F is 64*T1")

    def handle(self, *args: Any, **options: Any) -> None:
        headers = []
        for header in options["header"]:
            name, colon, value = header.partition(":")
            if not colon:
                raise CommandError(f"--header {header!r}: expected 'Name: value'")
            headers.append((name.strip(), value.strip()))
        bind = options["bind"] or ("::1" if "[" in options["uri"] else "127.0.0.1")
        try:
            timings = Timings(t1=options["t1"], t2=max(4.0, options["t1"]))
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        loop = new_event_loop()
        try:
            response = loop.run_until_complete(
                self._send(
                    options["uri"],
                    options["method"].upper(),
                    headers,
                    transport=options["transport"],
                    bind=bind,
                    timings=timings,
                )
            )
        except RequestFailed as exc:
            self.stderr.write(f"no final response: {exc}")
            sys.exit(2)
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        finally:
            loop.close()
        self.stdout.write(bytes(response).decode("utf-8", "replace"))
        sys.exit(0 if 200 <= response.status_code < 300 else 1)

    async def _send(
        self,
        uri: str,
        method: str,
        headers: list[tuple[str, str]],
        *,
        transport: str | None,
        bind: str,
        timings: Timings,
    ) -> Response:
        async with client_endpoint(bind, timings=timings) as endpoint:
            return await endpoint.request(method, uri, headers=headers, protocol=transport)
