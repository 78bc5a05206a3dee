"""The OpenAPI pages of a real daemon load nothing from outside it: /docs (Swagger UI) and
/redoc reference only the daemon's own URLs, each of which answers with the right type,
and the OpenAPI document they read loads."""

from __future__ import annotations

import re
from collections.abc import Iterator
from html.parser import HTMLParser
from urllib.parse import urljoin, urlsplit

import httpx
import pytest

from supernode.devnet import LocalFederation
from tests.conftest import TEST_SETTINGS

pytestmark = pytest.mark.integration
TYPES = {".js": "text/javascript", ".css": "text/css", ".png": "image/png"}


class _Refs(HTMLParser):
    """Every URL a page loads: <script src>, <link href>, <img src>, ReDoc's spec-url."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if value and (tag, name) in {
                ("script", "src"),
                ("link", "href"),
                ("img", "src"),
                ("redoc", "spec-url"),
            }:
                self.urls.append(value)


def _refs(html: str) -> list[str]:
    parser = _Refs()
    parser.feed(html)
    return parser.urls


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("docs-page")
    with LocalFederation(root=root, peers=1, settings=dict(TEST_SETTINGS)) as fed:
        yield fed.daemons[0].url


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_load_only_from_the_daemon(daemon: str, page: str) -> None:
    with httpx.Client(base_url=daemon, timeout=10) as c:
        r = c.get(page)
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/html")
        assert "://" not in r.text, "the page names an outside address"
        urls = _refs(r.text)
        assets = [u for u in urls if not u.endswith("openapi.json")]
        assert len(assets) >= 2, urls  # the script and the icon at least
        for url in urls:
            parts = urlsplit(urljoin(daemon + page, url))
            assert (parts.scheme, parts.netloc) == ("http", urlsplit(daemon).netloc), url
        for url in assets:
            got = c.get(url)
            assert got.status_code == 200, url
            want = TYPES[url[url.rindex(".") :]]
            assert got.headers["content-type"].split(";")[0] == want, url
            assert len(got.content) > 1000, url


def test_swagger_ui_reads_this_openapi_document(daemon: str) -> None:
    with httpx.Client(base_url=daemon, timeout=10) as c:
        page = c.get("/docs").text
        (bundle,) = [u for u in _refs(page) if u.endswith("swagger-ui-bundle.js")]
        js = c.get(bundle).text
        assert "SwaggerUIBundle" in js
        # FastAPI writes OpenAPI 3.1, which Swagger UI reads from its version 5 on
        major = re.search(r'PACKAGE_VERSION:"(\d+)\.', js)
        assert major is not None and int(major.group(1)) >= 5
        spec_url = re.search(r"url: '([^']+)'", page)
        assert spec_url is not None
        spec = c.get(spec_url.group(1))
        assert spec.status_code == 200
        doc = spec.json()
        assert doc["openapi"].startswith("3.1")
        assert "/spend_credits" in doc["paths"] and "/docs" not in doc["paths"]
