"""The pure cores import no Django, Redis, sockets, asyncio or clock (DESIGN.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PURE_MODULES = (
    sorted((ROOT / "sipcore" / "sip").glob("*.py"))
    + [ROOT / "sipcore" / "dialplan.py"]
    + [ROOT / "callops" / "ivr" / name for name in ("machine.py", "numbers.py", "prompts.py", "schema.py")]
)
FORBIDDEN = {
    "django",
    "redis",
    "socket",
    "asyncio",
    "time",
    "selectors",
    "threading",
    "celery",
    "twilio",
    "callops.redis",
}


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


@pytest.mark.smoke
@pytest.mark.parametrize("path", PURE_MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_pure_module_imports_no_io_or_framework(path):
    forbidden = {
        name for name in imported_modules(path) if name in FORBIDDEN or name.split(".")[0] in FORBIDDEN
    }
    assert not forbidden, f"{path.relative_to(ROOT)} imports {sorted(forbidden)}"


def test_the_check_sees_imports():
    assert "django.db" in imported_modules(ROOT / "callops" / "ivr" / "service.py")
