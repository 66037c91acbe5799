"""One egress guard for every URL the server fetches on a caller's behalf (a BYO evaluator, an
``init_adapter`` or dataset URL): the caller must not be able to make the server reach what only
the server can reach — its loopback services, the private network, a cloud metadata endpoint.

``guard_url`` resolves the host (every A/AAAA record) and refuses it when any address is
loopback, private (RFC 1918, fc00::/7), link-local, CGNAT (100.64/10), unspecified, multicast,
reserved or otherwise not globally routable, or a cloud metadata address — unless
``STUDIO_EGRESS_ALLOW`` (hosts, IPs or CIDRs) lists it. A metadata address is allowed only when
listed by itself, never through a CIDR that happens to contain it.

A check before the fetch is not enough: DNS may answer differently a second later (rebinding) and
a redirect may point anywhere. So the clients built here check at connect time and connect to the
address they checked (``guarded_async_client``, httpx), and never follow redirects
(``guard_fsspec_http`` does the same for fsspec's http filesystem, which ingest reads URLs with).

Object-store URLs (s3://, gs://, hf://, az://…) go to the provider's API endpoint, which the
server's environment sets, not to a host the caller names: they pass here unchanged (which buckets a
caller may read is STUDIO_DATA_ROOTS' business). ``memory://`` and ``file://`` never leave the
process. Any other scheme (ftp, sftp, smb, webhdfs…) is refused.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from functools import partial
from typing import Any
from urllib.parse import urlsplit

from studio.errors import StudioError
from studio.settings import StudioSettings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

HTTP_SCHEMES = ("http", "https")
# Not a caller-chosen host: a cloud provider's API (endpoint from the server's environment) or this
# process itself.
PASS_SCHEMES = ("s3", "s3a", "gs", "gcs", "hf", "az", "abfs", "abfss", "memory", "file", "local")

METADATA_HOSTS = frozenset({"metadata.google.internal", "metadata.goog", "metadata",
                            "instance-data", "instance-data.ec2.internal"})
METADATA_ADDRESSES = frozenset(ipaddress.ip_address(a) for a in (
    "169.254.169.254", "169.254.170.2", "169.254.169.253", "fd00:ec2::254", "100.100.100.200",
    "192.0.0.192"))
CGNAT = ipaddress.ip_network("100.64.0.0/10")
NAT64 = ipaddress.ip_network("64:ff9b::/96")

FIX = ("point it at a public address, or have an admin add the host, address or CIDR to "
       "STUDIO_EGRESS_ALLOW (comma-separated) if the studio may reach it")


def guard_url(url: str, settings: StudioSettings | None = None, *, what: str = "URL") -> str:
    """Return ``url`` when the server may fetch it for a caller; else a 400 ``StudioError`` naming
    the host, the address it resolved to and the fix. ``what`` names the URL in the message
    ("evaluator URL"). Resolves DNS: call it off the event loop."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise StudioError(f"{what} {url!r} is not a valid URL ({e})", "give a full http(s):// URL") from None
    scheme = parts.scheme.lower()
    if scheme in PASS_SCHEMES:
        return url
    if scheme not in HTTP_SCHEMES:
        raise StudioError(f"{what} {url!r}: the studio fetches only http(s) URLs for a caller "
                          f"(and object stores: {', '.join(PASS_SCHEMES[:6])}), not {scheme or 'a bare path'}://",
                          "give an http:// or https:// URL")
    host = parts.hostname
    if not host:
        raise StudioError(f"{what} {url!r} has no host", "give a full http(s):// URL with a host")
    check_host(host, port or (443 if scheme == "https" else 80), settings, what=what)
    guard_fsspec_http(settings)
    return url


def guard_location(location: str, settings: StudioSettings | None = None, *, what: str = "URL") -> str:
    """``guard_url`` for a location that may also be a local path (no ``scheme://``), which passes."""
    return guard_url(location, settings, what=what) if "://" in location else location


def check_host(host: str, port: int, settings: StudioSettings | None = None, *,
               what: str = "URL") -> list[str]:
    """Resolve ``host`` and return its addresses (as strings) when every one may be reached;
    else the 400 of ``guard_url``."""
    allow = allow_entries(settings)
    name = host.strip("[]").rstrip(".").lower()
    where = f"{what}: host {host!r}" if what else f"host {host!r}"
    if name in METADATA_HOSTS and name not in allow.hosts:
        raise StudioError(f"{where} is a cloud metadata endpoint; refused", FIX)
    try:
        infos = socket.getaddrinfo(name, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as e:
        raise StudioError(f"{where} does not resolve ({e})",
                          "check the host name (the studio's own DNS resolves it)") from None
    addresses = list(dict.fromkeys(info[4][0] for info in infos))
    for address in addresses:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
        category = blocked_category(ip)
        if category and not allow.permits(name, ip, metadata=category == "cloud metadata"):
            raise StudioError(f"{where} resolves to {ip} ({category}); the studio "
                              "does not fetch loopback, private, link-local or metadata addresses "
                              "for a caller", FIX)
    return addresses


def blocked_category(ip: IPAddress) -> str | None:
    """Why the server must not connect to ``ip`` for a caller, or None for a public address."""
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or (ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF) if ip in NAT64 else None)
        if embedded is not None:
            return blocked_category(embedded)
    if ip in METADATA_ADDRESSES:
        return "cloud metadata"
    for category, test in (("loopback", ip.is_loopback), ("unspecified", ip.is_unspecified),
                           ("link-local", ip.is_link_local), ("multicast", ip.is_multicast),
                           ("private", ip.is_private), ("reserved", ip.is_reserved)):
        if test:
            return category
    if isinstance(ip, ipaddress.IPv4Address) and ip in CGNAT:
        return "carrier-grade NAT (100.64.0.0/10)"
    if not ip.is_global:  # documentation, benchmarking, 6to4 relay… ranges: not the internet
        return "non-global"
    return None


class AllowList:
    """``STUDIO_EGRESS_ALLOW`` parsed: host names (exact, case-insensitive) and networks."""

    def __init__(self, raw: str | None):
        self.hosts: set[str] = set()
        self.networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for entry in (e.strip() for e in (raw or "").split(",")):
            if not entry:
                continue
            try:
                self.networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
            except ValueError:
                self.hosts.add(entry.rstrip(".").lower())

    def permits(self, host: str, ip: IPAddress, *, metadata: bool = False) -> bool:
        if host in self.hosts:
            return True
        if metadata:  # only when listed by itself: a CIDR for a private range must not open it
            return any(n.num_addresses == 1 and ip in n for n in self.networks)
        return any(ip in n for n in self.networks)


def allow_entries(settings: StudioSettings | None) -> AllowList:
    # Without settings handed in, read the environment now (not the cached get_settings()), so the
    # process' current STUDIO_EGRESS_ALLOW applies.
    return AllowList((settings or StudioSettings()).egress_allow)


def redact_url(url: str) -> str:
    """``url`` without user info, query or fragment: fit for a message or a stored reason."""
    try:
        parts = urlsplit(url)
        netloc = parts.hostname or ""
        if ":" in netloc:
            netloc = f"[{netloc}]"
        if parts.port:
            netloc += f":{parts.port}"
    except ValueError:
        return "(invalid URL)"
    return f"{parts.scheme}://{netloc}{parts.path}"


def guarded_async_client(settings: StudioSettings | None = None, **kwargs: Any):
    """An ``httpx.AsyncClient`` that resolves and checks every host when it connects, connects to
    the address it checked (so a DNS answer that changes in between does not matter) and never
    follows a redirect. ``kwargs`` go to the client (timeout…)."""
    import httpcore
    import httpx

    transport = httpx.AsyncHTTPTransport()
    # httpx has no argument for httpcore's network backend: the pool is rebuilt around a guarded
    # one (TLS still verifies the URL's host name: httpcore passes it as server_hostname).
    transport._pool = httpcore.AsyncConnectionPool(
        ssl_context=httpx.create_ssl_context(), network_backend=_guarded_backend(settings))
    return httpx.AsyncClient(transport=transport, follow_redirects=False, trust_env=False, **kwargs)


def _guarded_backend(settings: StudioSettings | None):
    import anyio
    import httpcore

    class GuardedBackend(httpcore.AsyncNetworkBackend):
        def __init__(self) -> None:
            self.inner = httpcore.AnyIOBackend()

        async def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                              local_address: str | None = None, socket_options: Any = None):
            check = partial(check_host, host, port, settings, what="")
            addresses = await anyio.to_thread.run_sync(check)
            error: Exception | None = None
            for address in addresses:
                try:
                    return await self.inner.connect_tcp(address, port, timeout=timeout,
                                                        local_address=local_address,
                                                        socket_options=socket_options)
                except httpcore.ConnectError as e:
                    error = e
            raise error or httpcore.ConnectError(f"{host} has no address")

        async def connect_unix_socket(self, path: str, timeout: float | None = None,
                                      socket_options: Any = None):
            raise httpcore.ConnectError("unix sockets are not reachable for a caller")

        async def sleep(self, seconds: float) -> None:
            await self.inner.sleep(seconds)

    return GuardedBackend()


def guard_fsspec_http(settings: StudioSettings | None = None) -> None:
    """Make fsspec's http(s) filesystem in this process check every host it connects to (aiohttp
    resolves through ``check_host``) and never follow redirects. Idempotent; ``guard_url`` calls
    it for each http(s) URL it passes, so whatever then reads that URL through fsspec is guarded."""
    import fsspec.config

    # The allowlist as a string, so equal settings give an equal fsspec token (a cached instance).
    allow = (settings or StudioSettings()).egress_allow
    options = {"get_client": partial(_guarded_aiohttp_session, allow), "allow_redirects": False}
    for protocol in HTTP_SCHEMES:
        fsspec.config.conf[protocol] = {**fsspec.config.conf.get(protocol, {}), **options}


async def _guarded_aiohttp_session(allow: str | None = None, **kwargs: Any):
    import aiohttp
    from aiohttp.abc import AbstractResolver
    from aiohttp.resolver import DefaultResolver

    settings = StudioSettings(egress_allow=allow)

    class GuardedResolver(AbstractResolver):
        def __init__(self) -> None:
            self.inner = DefaultResolver()

        async def resolve(self, host: str, port: int = 0, family: int = socket.AF_INET):
            # Checked here, then connected to exactly these addresses (aiohttp uses what we return).
            allowed = set(await asyncio.to_thread(check_host, host, port or 80, settings, what=""))
            return [r for r in await self.inner.resolve(host, port, family) if r["host"] in allowed]

        async def close(self) -> None:
            await self.inner.close()

    kwargs.pop("connector", None)
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(resolver=GuardedResolver()),
                                 trust_env=False, **kwargs)
