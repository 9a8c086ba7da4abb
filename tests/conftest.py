"""Shared fixtures: every backend-parametrized test runs on each store URL in STORE_PARAMS."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from flowstate.stores import Store, open_store

STORE_PARAMS = ["memory", "sqlite"]


def make_store_url(kind: str, tmp_path: Path) -> str:
    if kind == "memory":
        return "memory://"
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'state.db'}"
    raise ValueError(kind)


@pytest.fixture(params=STORE_PARAMS)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty store URL of each backend kind."""
    return make_store_url(request.param, tmp_path)


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    st = open_store(store_url)
    try:
        yield st
    finally:
        await st.aclose()
