"""The web page and the API docs need nothing but the server: no CDN, no internet."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import httpx
import pytest

from flowstate.cli.demo import create_server
from flowstate.http import create_app

ASSET = re.compile(r'(?:src|href)="([^"]+)"')


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    server = create_server("memory://", auth={"t": "u"})
    transport = httpx.ASGITransport(app=create_app(server))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client
    await server.aclose()


@pytest.mark.parametrize("page", ["/", "/docs", "/redoc"])
async def test_pages_load_only_local_assets(http: httpx.AsyncClient, page: str) -> None:
    response = await http.get(page)
    assert response.status_code == 200
    assets = [a for a in ASSET.findall(response.text) if not a.startswith("data:")]
    assert assets, f"{page} references no assets"
    for asset in assets:
        if page == "/redoc" and asset.startswith("https://fonts.googleapis.com"):
            continue  # optional web fonts: the page renders with system fonts offline
        assert asset.startswith("/"), f"{page} loads {asset} from elsewhere"
        loaded = await http.get(asset)
        assert loaded.status_code == 200, asset
        assert len(loaded.content) > 100, asset


async def test_swagger_ui_bundle_is_served_and_points_at_our_schema(
    http: httpx.AsyncClient,
) -> None:
    docs = (await http.get("/docs")).text
    assert "url: '/openapi.json'" in docs
    bundle = await http.get("/static-offline-docs/swagger-ui-bundle.js")
    assert bundle.status_code == 200 and b"SwaggerUIBundle" in bundle.content[:5000]
