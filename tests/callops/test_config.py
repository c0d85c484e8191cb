"""Settings come from the environment and refuse what would only fail later."""

from __future__ import annotations

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
