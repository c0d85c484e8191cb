"""Settings come from the environment and refuse what would only fail later."""

from __future__ import annotations

import secrets
import subprocess
import sys

import pytest

from callops.config import DEVELOPMENT_SECRET_KEY, ConfigError, ListenAddress, load_config
from tests.support.processes import BASE_DIR

pytestmark = pytest.mark.smoke

GOOD_KEY = "k" * 50


def config(**env: str):
    return load_config({"SECRET_KEY": GOOD_KEY, **env})


def test_defaults_are_a_sqlite_file_under_var_and_no_redis():
    cfg = config()
    assert cfg.debug is False
    assert cfg.database["ENGINE"] == "django.db.backends.sqlite3"
    assert cfg.database["NAME"].endswith("callops.sqlite3")
    assert cfg.database["TEST"]["NAME"].endswith("test_callops.sqlite3")
    assert cfg.redis_url is None
    assert cfg.sip_listen == (
        ListenAddress("udp", "127.0.0.1", 5060),
        ListenAddress("tcp", "127.0.0.1", 5060),
    )


def test_postgres_url_is_parsed():
    cfg = config(DATABASE_URL="postgres://ops:s3cret@db.internal:5433/callops")
    db = cfg.database
    assert (db["ENGINE"], db["HOST"], db["PORT"], db["NAME"], db["USER"], db["PASSWORD"]) == (
        "django.db.backends.postgresql",
        "db.internal",
        5433,
        "callops",
        "ops",
        "s3cret",
    )


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("not a url", "has no scheme"),
        ("mysqlx://host/db", "has scheme 'mysqlx'"),
        ("postgres://host:5432/", "names no database"),
        ("postgres:///callops", "names no host"),
        ("postgres://host:99999/callops", "not a valid URL"),
    ],
)
def test_bad_database_url_gives_a_clear_error(url, message):
    with pytest.raises(ConfigError, match="DATABASE_URL") as caught:
        config(DATABASE_URL=url)
    assert message in str(caught.value)


@pytest.mark.parametrize("url", ["http://localhost:6379", "redis://", "redis://host:70000/0"])
def test_bad_redis_url_is_refused(url):
    with pytest.raises(ConfigError, match="REDIS_URL"):
        config(REDIS_URL=url)


def test_refuses_debug_off_with_the_development_secret_key():
    with pytest.raises(ConfigError, match="DEBUG off and the development SECRET_KEY"):
        load_config({})
    with pytest.raises(ConfigError, match="DEBUG off and the development SECRET_KEY"):
        load_config({"DEBUG": "0", "SECRET_KEY": DEVELOPMENT_SECRET_KEY})
    assert load_config({"DEBUG": "1"}).secret_key == DEVELOPMENT_SECRET_KEY


def test_short_secret_key_is_refused_in_production():
    with pytest.raises(ConfigError, match="at least 32"):
        load_config({"SECRET_KEY": "short"})


def test_lists_and_addresses():
    cfg = config(
        ALLOWED_HOSTS="ops.example.com,.example.org",
        SIP_LISTEN="udp:0.0.0.0:5060, tcp:[::1]:5061",
        PUBLIC_BASE_URL="https://ops.example.com/",
        NODE_ID="node-a",
    )
    assert cfg.allowed_hosts == ("ops.example.com", ".example.org")
    assert cfg.sip_listen == (ListenAddress("udp", "0.0.0.0", 5060), ListenAddress("tcp", "::1", 5061))
    assert str(cfg.sip_listen[1]) == "tcp:[::1]:5061"
    assert cfg.public_base_url == "https://ops.example.com"
    assert cfg.node_id == "node-a"


@pytest.mark.parametrize("entry", ["sctp:1.2.3.4:5060", "udp:1.2.3.4", "udp:[::1]", "tcp::5060", "udp:h:0"])
def test_bad_sip_listen_entry(entry):
    with pytest.raises(ConfigError, match="SIP_LISTEN entry"):
        config(SIP_LISTEN=entry)


def test_ivr_async_commit_defaults_on_and_can_be_turned_off():
    assert config().ivr_async_commit is True
    assert config(IVR_ASYNC_COMMIT="0").ivr_async_commit is False


def test_public_base_url_must_be_absolute():
    with pytest.raises(ConfigError, match="PUBLIC_BASE_URL"):
        config(PUBLIC_BASE_URL="ops.example.com")


def test_manage_py_refuses_to_start_with_a_clear_message():
    """The whole process, as an operator would meet it: one line, no traceback."""
    env = {"PATH": "/usr/bin:/bin", "DEBUG": "0", "HOME": "/tmp"}
    result = subprocess.run(
        [sys.executable, "manage.py", "check"],
        check=False,
        cwd=BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "configuration error: Refusing to start with DEBUG off" in result.stderr
    assert "Traceback" not in result.stderr


# --- the web address a newcomer changes, and what follows it -----------------------------------


def test_public_base_url_and_allowed_hosts_follow_web_host_and_port():
    cfg = config()
    assert (cfg.web_host, cfg.web_port, cfg.public_base_url) == ("127.0.0.1", 8000, "http://127.0.0.1:8000")
    assert cfg.allowed_hosts == ("127.0.0.1", "localhost", "[::1]")

    cfg = config(WEB_PORT="8100")
    assert cfg.public_base_url == "http://127.0.0.1:8100"

    cfg = config(WEB_HOST="192.168.1.20", WEB_PORT="9000")
    assert cfg.public_base_url == "http://192.168.1.20:9000"
    assert "192.168.1.20" in cfg.allowed_hosts  # else every request to it is a 400

    cfg = config(WEB_HOST="::1", WEB_PORT="9000")
    assert cfg.public_base_url == "http://[::1]:9000"

    # Listening on every interface: the machine itself reaches it through loopback.
    assert config(WEB_HOST="0.0.0.0").public_base_url == "http://127.0.0.1:8000"


def test_an_explicit_public_base_url_wins_and_its_host_is_allowed():
    cfg = config(WEB_PORT="8100", PUBLIC_BASE_URL="https://ivr.example.com")
    assert cfg.public_base_url == "https://ivr.example.com"
    assert "ivr.example.com" in cfg.allowed_hosts
    # An explicit ALLOWED_HOSTS is taken as written.
    assert config(ALLOWED_HOSTS="a.example.com", WEB_HOST="10.0.0.5").allowed_hosts == ("a.example.com",)


@pytest.mark.parametrize("port", ["0", "65536", "80a", "", "\uff18\uff10"])
def test_bad_web_port_is_refused(port):
    with pytest.raises(ConfigError, match="WEB_PORT"):
        config(WEB_PORT=port)


def test_https_only_is_on_in_production_and_off_for_development():
    production = config()
    assert (production.https_only, production.hsts_seconds) == (True, 365 * 24 * 3600)
    development = load_config({"DEBUG": "1"})
    assert (development.https_only, development.hsts_seconds) == (False, 0)
    plain = config(HTTPS_ONLY="0")  # e.g. a benchmark over plain HTTP on loopback
    assert (plain.https_only, plain.hsts_seconds) == (False, 0)
    assert config(HSTS_SECONDS="300").hsts_seconds == 300
    with pytest.raises(ConfigError, match="HSTS_SECONDS"):
        config(HSTS_SECONDS="-1")


def test_proxy_and_scraper_networks():
    cfg = config()
    assert cfg.trusted_proxies == ()
    assert [str(n) for n in cfg.metrics_networks] == ["127.0.0.0/8", "::1/128"]
    cfg = config(TRUSTED_PROXIES="10.0.0.1, 10.8.0.0/16", METRICS_ALLOWED_NETWORKS="192.0.2.0/24")
    assert [str(n) for n in cfg.trusted_proxies] == ["10.0.0.1/32", "10.8.0.0/16"]
    assert [str(n) for n in cfg.metrics_networks] == ["192.0.2.0/24"]
    with pytest.raises(ConfigError, match=r"TRUSTED_PROXIES entry 'proxy\.internal'"):
        config(TRUSTED_PROXIES="proxy.internal")
    with pytest.raises(ConfigError, match="METRICS_ALLOWED_NETWORKS"):
        config(METRICS_ALLOWED_NETWORKS="10.0.0.0/33")


def test_postgres_connections_time_out_unless_the_url_says_otherwise():
    assert config(DATABASE_URL="postgres://u@db:5432/x").database["OPTIONS"]["connect_timeout"] == 5
    url = "postgres://u@db:5432/x?connect_timeout=2"
    assert config(DATABASE_URL=url).database["OPTIONS"]["connect_timeout"] in (2, "2")


def run_manage(args: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    base = {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "CALLOPS_VAR_DIR": str(BASE_DIR / "var")}
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        check=False,
        cwd=BASE_DIR,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_check_deploy_is_clean_with_production_settings():
    """What an operator runs before going live: no warnings at all."""
    result = run_manage(
        ["check", "--deploy", "--fail-level", "WARNING"],
        DEBUG="0",
        SECRET_KEY=secrets.token_urlsafe(48)[:50],
        ALLOWED_HOSTS="ops.example.com",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues (0 silenced)." in result.stdout
    assert "WARNINGS" not in result.stdout + result.stderr


def test_check_deploy_behind_a_tls_proxy_is_clean_too():
    result = run_manage(
        ["check", "--deploy", "--fail-level", "WARNING"],
        DEBUG="0",
        SECRET_KEY=secrets.token_urlsafe(48)[:50],
        ALLOWED_HOSTS="ops.example.com",
        TRUSTED_PROXIES="10.0.0.1",
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_development_path_stays_plain_http():
    """`make run` (DEBUG on) serves http://127.0.0.1:8000: no redirect, no secure-only cookies."""
    code = (
        "from django.conf import settings as s; "
        "print(s.SECURE_SSL_REDIRECT, s.SESSION_COOKIE_SECURE, s.CSRF_COOKIE_SECURE, s.SECURE_HSTS_SECONDS)"
    )
    result = run_manage(["shell", "-v", "0", "-c", code], DEBUG="1")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "False", "False", "0"]
