from __future__ import annotations

import pytest

from tests.sipcore.audit.support import clean


@pytest.fixture
def r(redis_client):
    clean(redis_client)
    yield redis_client
    clean(redis_client)
