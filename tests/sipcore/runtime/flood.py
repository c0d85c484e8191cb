"""A hostile peer for the flood test: random bytes and truncated messages over UDP.

Run as a separate process: ``python -m tests.sipcore.runtime.flood HOST PORT SECONDS RATE``.
Prints how many datagrams it sent.
"""

from __future__ import annotations

import random
import socket
import sys
import time

INVITE = (
    b"INVITE sip:alice@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKflood\r\n"
    b"Max-Forwards: 70\r\nFrom: <sip:f@127.0.0.1>;tag=1\r\nTo: <sip:alice@127.0.0.1>\r\n"
    b"Call-ID: flood@127.0.0.1\r\nCSeq: 1 INVITE\r\nContact: <sip:f@127.0.0.1:9>\r\n"
    b"Content-Type: application/sdp\r\nContent-Length: 30\r\n\r\nv=0\r\no=- 1 1 IN IP4 127.0.0.1\r\n"
)


def datagrams(rng: random.Random):
    while True:
        kind = rng.random()
        if kind < 0.4:
            yield rng.randbytes(rng.randint(1, 1400))
        elif kind < 0.8:
            yield INVITE[: rng.randint(1, len(INVITE) - 1)]  # truncated
        else:  # a header section with garbage spliced in
            cut = rng.randint(0, len(INVITE))
            yield INVITE[:cut] + rng.randbytes(rng.randint(1, 200)) + INVITE[cut:]


def main() -> None:
    host, port, seconds, rate = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
    rng = random.Random(int(sys.argv[5]) if len(sys.argv) > 5 else 4475)
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(8)]
    sent = 0
    started = time.monotonic()
    for data in datagrams(rng):
        elapsed = time.monotonic() - started
        if elapsed >= seconds:
            break
        if sent > elapsed * rate:
            time.sleep(0.001)
            continue
        sockets[sent % len(sockets)].sendto(data, (host, port))
        sent += 1
    print(sent, flush=True)


if __name__ == "__main__":
    main()
