"""`WEB_PORT=... make run`: the app serves there, and Twilio's signatures for that address are good."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.parse
import urllib.request

import pytest

from callops.devstack import _processes, free_port
from tests.callops.ivr.support import sign
from tests.support.processes import BASE_DIR, http_get, wait_for

TOKEN = "web-port-test-auth-token-0123456789"


def test_the_web_process_binds_where_asked_ipv6_included():
    assert "runserver 127.0.0.1:8100 " in _processes({}, "127.0.0.1", 8100)["web"]
    assert "runserver [::1]:8100 " in _processes({}, "::1", 8100)["web"]


@pytest.mark.slow
def test_make_run_honours_web_port_and_the_default_public_base_url_follows(tmp_path, free_tcp_port):
    port = free_tcp_port
    sip_port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in {"DEBUG", "SECRET_KEY", "REDIS_URL", "DATABASE_URL",
                                                           "PUBLIC_BASE_URL", "ALLOWED_HOSTS"}}  # fmt: skip
    env.update(
        CALLOPS_VAR_DIR=str(tmp_path / "var"),
        WEB_PORT=str(port),  # no --port: the variable alone
        TWILIO_AUTH_TOKEN=TOKEN,
        SIP_LISTEN=f"udp:127.0.0.1:{sip_port},tcp:127.0.0.1:{sip_port}",  # not the shared 5060
    )
    log_path = tmp_path / "run.log"
    with log_path.open("wb") as log:
        runner = subprocess.Popen(
            [sys.executable, "-m", "callops.devstack", "run"],
            cwd=BASE_DIR,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            base = f"http://127.0.0.1:{port}"
            wait_for(
                lambda: http_get(f"{base}/healthz", timeout=5)[0] == 200,
                timeout=90,
                what=f"/healthz on {port}; log:\n{log_path.read_text()[-3000:]}",
            )
            assert f"devstack: http://127.0.0.1:{port}/admin/" in log_path.read_text()

            # Signed for http://127.0.0.1:<port>, as Twilio would sign the default PUBLIC_BASE_URL.
            params = {"CallSid": "CA" + "1" * 32, "AccountSid": "AC" + "0" * 32, "From": "+525550009876",
                      "To": "+525550000100", "CallStatus": "in-progress", "Direction": "inbound"}  # fmt: skip
            request = urllib.request.Request(  # noqa: S310 - loopback
                f"{base}/twilio/voice/",
                data=urllib.parse.urlencode(params).encode(),
                headers={"X-Twilio-Signature": sign("/twilio/voice/", params, TOKEN, base)},
            )
            with urllib.request.urlopen(request, timeout=15) as response:  # noqa: S310 - loopback
                assert response.status == 200
                assert b"<Gather" in response.read()
        finally:
            if runner.poll() is None:
                os.killpg(runner.pid, signal.SIGINT)
                try:
                    runner.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(runner.pid, signal.SIGKILL)
                    runner.wait()
