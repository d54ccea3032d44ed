"""Locate external tools for interop tests: skip when missing, fail when CI requires them."""

from __future__ import annotations

import os
import shutil

import pytest

REQUIRE_ENV = "PIMON_REQUIRE_INTEROP"


def require_tool(name: str) -> str:
    """Return the path of executable ``name``; skip without it, fail if PIMON_REQUIRE_INTEROP=1."""
    path = shutil.which(name)
    if path is not None:
        return path
    message = f"{name} is not installed (not on PATH)"
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{message}, and {REQUIRE_ENV}=1 demands every interop tool")
    pytest.skip(message)
