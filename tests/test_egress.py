"""The egress guard: every address class a caller must not reach is refused with the host, the
address and the fix; DNS names and odd spellings that mean 127.0.0.1 are refused too;
STUDIO_EGRESS_ALLOW opens hosts, addresses and CIDRs (a metadata address only by itself); the
guarded clients (httpx, fsspec's http) check at connect time and never follow a redirect to an
unchecked host — proven with loopback listeners that must receive nothing."""

from __future__ import annotations

import asyncio
import http.server
from collections.abc import Iterator

import fsspec
import fsspec.config
import pytest

from studio.egress import guard_fsspec_http, guard_location, guard_url, guarded_async_client, redact_url
from studio.errors import StudioError
from studio.settings import StudioSettings
from tests.loopback import HandlerThread


def allow(entries: str | None) -> StudioSettings:
    return StudioSettings(egress_allow=entries)


NONE = allow(None)


class Listener(HandlerThread):
    """A stdlib HTTP server on a loopback address that records each request path; ``/redirect``
    answers 302 to ``redirect_to``, anything else 200 with a small JSON body."""

    def __init__(self, host: str = "127.0.0.1", redirect_to: str = ""):
        seen = self.seen = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self) -> None:
                seen.append(self.path)
                length = int(self.headers.get("content-length") or 0)
                self.rfile.read(length)
                if self.path == "/redirect":
                    self.send_response(302)
                    self.send_header("Location", redirect_to)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = b'{"score": 1, "secret": "internal"}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_HEAD = _answer

            def log_message(self, *args) -> None:
                pass

        super().__init__(Handler, host)


@pytest.fixture
def listener() -> Iterator[Listener]:
    server = Listener()
    yield server
    server.stop()


@pytest.fixture
def fsspec_conf(monkeypatch):
    """fsspec's global config is restored after the test (guard_url installs the http guard)."""
    for protocol in ("http", "https"):
        monkeypatch.setitem(fsspec.config.conf, protocol, dict(fsspec.config.conf.get(protocol, {})))


@pytest.mark.parametrize(("url", "address", "category"), [
    ("http://127.0.0.1/", "127.0.0.1", "loopback"),
    ("http://[::1]:8000/x", "::1", "loopback"),
    ("http://10.0.0.5/", "10.0.0.5", "private"),
    ("http://172.16.1.1/", "172.16.1.1", "private"),
    ("https://192.168.1.10/", "192.168.1.10", "private"),
    ("http://[fd12::1]/", "fd12::1", "private"),
    ("http://169.254.1.1/", "169.254.1.1", "link-local"),
    ("http://[fe80::1]/", "fe80::1", "link-local"),
    ("http://100.64.0.1/", "100.64.0.1", "carrier-grade NAT"),
    ("http://0.0.0.0/", "0.0.0.0", "unspecified"),
    ("http://[::]/", "::", "unspecified"),
    ("http://224.0.0.1/", "224.0.0.1", "multicast"),
    ("http://[ff02::1]/", "ff02::1", "multicast"),
    ("http://169.254.169.254/latest/meta-data/", "169.254.169.254", "cloud metadata"),
    ("http://[fd00:ec2::254]/", "fd00:ec2::254", "cloud metadata"),
    ("http://192.0.2.1/", "192.0.2.1", "private"),  # documentation range: not the internet
    ("http://[::ffff:127.0.0.1]/", "127.0.0.1", "loopback"),  # IPv4-mapped
])
def test_each_address_class_is_refused_naming_host_address_and_fix(url, address, category):
    with pytest.raises(StudioError) as e:
        guard_url(url, NONE, what="evaluator URL")
    assert e.value.status_code == 400
    assert "evaluator URL" in e.value.problem and category in e.value.problem
    assert address in e.value.problem or address in str(e.value)
    assert "STUDIO_EGRESS_ALLOW" in e.value.fix


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "[::1]", "0x7f.1", "2130706433", "127.1",
                                  "LOCALHOST.", "0177.0.0.1"])
def test_every_spelling_of_loopback_is_refused(host):
    with pytest.raises(StudioError, match="loopback") as e:
        guard_url(f"http://{host}:9/score", NONE)
    assert host.strip("[]").rstrip(".").lower() in e.value.problem.lower()


def test_metadata_host_names_are_refused_before_dns():
    with pytest.raises(StudioError, match="cloud metadata endpoint"):
        guard_url("http://metadata.google.internal/computeMetadata/v1/", NONE)


def test_public_addresses_and_object_stores_pass_other_schemes_do_not():
    assert guard_url("https://8.8.8.8/score", NONE) == "https://8.8.8.8/score"
    assert guard_url("http://[2001:4860:4860::8888]/", NONE) == "http://[2001:4860:4860::8888]/"
    for url in ("s3://bucket/data.jsonl", "gs://bucket/x", "memory://store/x"):
        assert guard_url(url, NONE) == url
    assert guard_location("/abs/path/adapter", NONE) == "/abs/path/adapter"
    for url, needle in [("ftp://8.8.8.8/x", r"only http\(s\)"), ("gopher://8.8.8.8/", r"only http\(s\)"),
                        ("http:///nohost", "has no host"), ("http://8.8.8.8:99999/", "not a valid URL")]:
        with pytest.raises(StudioError, match=needle) as e:
            guard_url(url, NONE)
        assert e.value.status_code == 400


def test_the_allowlist_opens_hosts_addresses_and_cidrs():
    assert guard_url("http://localhost:9/", allow("localhost"))
    assert guard_url("http://localhost:9/", allow("127.0.0.1"))
    assert guard_url("http://127.0.0.7:9/", allow("10.0.0.0/8, 127.0.0.0/8"))
    assert guard_url("http://10.1.2.3/", allow("10.0.0.0/8"))
    assert guard_url("http://[::1]/", allow("::1"))
    with pytest.raises(StudioError, match="10.1.2.3"):
        guard_url("http://10.1.2.3/", allow("10.0.0.0/16, example.com"))
    # A metadata address opens only when listed by itself, not through its link-local range.
    with pytest.raises(StudioError, match="cloud metadata"):
        guard_url("http://169.254.169.254/", allow("169.254.0.0/16"))
    assert guard_url("http://169.254.169.254/", allow("169.254.169.254"))


def test_the_environment_is_read_when_no_settings_are_handed_in(monkeypatch):
    monkeypatch.delenv("STUDIO_EGRESS_ALLOW", raising=False)
    with pytest.raises(StudioError):
        guard_url("http://127.0.0.1:9/")
    monkeypatch.setenv("STUDIO_EGRESS_ALLOW", "127.0.0.1")
    assert guard_url("http://127.0.0.1:9/")


def test_redact_url_drops_user_info_and_query():
    assert redact_url("https://bob:pw@eval.example.com:8443/score?token=abc#x") == \
        "https://eval.example.com:8443/score"


def post(url: str, settings: StudioSettings, **kw):
    async def go():
        async with guarded_async_client(settings, timeout=5) as client:
            return await client.post(url, json={}, **kw)

    return asyncio.run(go())


def test_the_httpx_client_checks_at_connect_time(listener):
    # A name that resolves to loopback is refused when connecting: nothing reaches the listener.
    with pytest.raises(StudioError, match="loopback"):
        post(f"http://localhost:{listener.port}/score", NONE)
    assert listener.seen == []
    r = post(f"http://localhost:{listener.port}/score", allow("127.0.0.1"))
    assert r.status_code == 200 and listener.seen == ["/score"]


def test_a_redirect_is_never_followed_to_an_unchecked_host():
    other = Listener("127.0.0.2")
    first = Listener("127.0.0.1", redirect_to=f"http://127.0.0.2:{other.port}/stolen")
    try:
        only_first = allow("127.0.0.1/32")
        r = post(f"http://127.0.0.1:{first.port}/redirect", only_first)
        assert r.status_code == 302  # handed back, not followed
        # Asked to follow, the next hop is checked like the first: 127.0.0.2 is not allowed.
        with pytest.raises(StudioError, match="127.0.0.2"):
            post(f"http://127.0.0.1:{first.port}/redirect", only_first, follow_redirects=True)
        assert first.seen == ["/redirect", "/redirect"] and other.seen == []
    finally:
        first.stop()
        other.stop()


def test_fsspec_http_reads_are_guarded_and_do_not_follow_redirects(listener, fsspec_conf):
    other = Listener("127.0.0.2")
    redirecting = Listener("127.0.0.1", redirect_to=f"http://127.0.0.2:{other.port}/stolen")
    try:
        only_loopback_1 = allow("127.0.0.1/32")
        url = guard_url(f"http://127.0.0.1:{listener.port}/data.json", only_loopback_1)
        assert fsspec.filesystem("http").cat_file(url) == b'{"score": 1, "secret": "internal"}'
        # A host name is checked when aiohttp resolves it (a DNS answer that changed is caught too).
        guard_fsspec_http(NONE)
        with pytest.raises(Exception) as e:
            fsspec.filesystem("http").cat_file(f"http://localhost:{listener.port}/via-dns")
        assert "loopback" in str(e.value) or "loopback" in repr(e.value.__cause__)
        assert "/via-dns" not in listener.seen
        # Redirects are not followed: the second listener never hears of it.
        guard_url(f"http://127.0.0.1:{redirecting.port}/redirect", only_loopback_1)
        try:
            fsspec.filesystem("http").cat_file(f"http://127.0.0.1:{redirecting.port}/redirect")
        except Exception:  # noqa: BLE001 — fsspec may call an unfollowed 302 an error; either is fine
            pass
        assert other.seen == []
    finally:
        redirecting.stop()
        other.stop()
