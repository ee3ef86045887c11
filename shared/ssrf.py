"""SSRF guard for webhook URLs: refuse addresses inside the deployment unless allow-listed.

A webhook URL is user input that makes a worker send a request. Without this
guard it reaches loopback services, the cloud metadata endpoint or the private
network. The host is checked after DNS resolution (a public name can point at
10.0.0.1), at submission and again at delivery; ``GuardedResolver`` applies the
same rule to the very lookup aiohttp connects with, so DNS rebinding between the
check and the connect cannot slip through.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolve = Callable[[str, int], Awaitable[list[str]]]

SCHEMES = ("http", "https")
METADATA = ipaddress.ip_address("169.254.169.254")
CGNAT = ipaddress.ip_network("100.64.0.0/10")
IETF_PROTOCOL = ipaddress.ip_network("192.0.0.0/24")  # not globally reachable; older Pythons disagree
NAT64 = ipaddress.ip_network("64:ff9b::/96")
PRIVATE = tuple(
    ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")
)


class UnsafeURLError(ValueError):
    """A webhook URL Fusebox will not send to; the message names the reason."""


class BlockedAddressError(OSError):
    """Raised inside aiohttp's connect by GuardedResolver; ``message`` is the UnsafeURLError text."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.EACCES, message)
        self.message = message


def blocked_cause(exc: BaseException) -> BlockedAddressError | None:
    """The BlockedAddressError behind an HTTP client exception, if the guard caused it."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, BlockedAddressError):
            return cur
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return None


@dataclass(frozen=True, slots=True)
class AllowList:
    """Hostnames and networks (CIDR or single address) exempt from the guard."""

    hosts: frozenset[str] = frozenset()
    networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def parse(cls, entries: Iterable[str]) -> AllowList:
        hosts: set[str] = set()
        nets: list[IPNetwork] = []
        for raw in entries:
            entry = raw.strip()
            if not entry:
                raise ValueError("allow_hosts entries must not be empty")
            try:
                nets.append(ipaddress.ip_network(entry, strict=False))
                continue
            except ValueError:
                pass
            if "/" in entry or ":" in entry or " " in entry:
                raise ValueError(f"allow_hosts entry {entry!r} is neither a hostname nor an address/CIDR")
            hosts.add(_norm_host(entry))
        return cls(frozenset(hosts), tuple(nets))

    def allows_host(self, host: str) -> bool:
        return _norm_host(host) in self.hosts

    def allows_address(self, addr: IPAddress) -> bool:
        return any(addr in net for net in self.networks if net.version == addr.version)


def _norm_host(host: str) -> str:
    return host.strip().rstrip(".").lower()


def _embedded_v4(addr: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 form carries (mapped, 6to4, NAT64), which is what the packet reaches."""
    if addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    if addr.sixtofour is not None:
        return addr.sixtofour
    if addr in NAT64:
        return ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
    return None


def blocked_reason(addr: IPAddress) -> str | None:
    """Why ``addr`` is refused, or None if it is a public address."""
    if isinstance(addr, ipaddress.IPv6Address):
        v4 = _embedded_v4(addr)
        if v4 is not None:
            inner = blocked_reason(v4)
            return f"{inner} (IPv4 {v4} inside IPv6)" if inner else None
    # Most specific name first: loopback, link-local etc. are also in ipaddress's is_private.
    if addr.is_unspecified:
        return "unspecified address"
    if addr.is_loopback:
        return "loopback address"
    if addr == METADATA:
        return "cloud metadata address"
    if addr.is_link_local:
        return "link-local address"
    if addr.is_multicast:
        return "multicast address"
    if isinstance(addr, ipaddress.IPv4Address) and addr in CGNAT:
        return "shared address space (CGNAT 100.64.0.0/10)"
    if any(addr in net for net in PRIVATE if net.version == addr.version):
        return "private address"
    if addr.is_reserved:
        return "reserved address"
    if addr.is_private or not addr.is_global or addr in IETF_PROTOCOL:
        # documentation, benchmarking, 192.0.0.0/24 and the other special-purpose ranges
        return "special-purpose (non-public) address"
    return None


def check_address(host: str, addr: IPAddress, allow: AllowList) -> None:
    """Raise UnsafeURLError if ``addr`` (resolved from ``host``) may not be contacted."""
    if allow.allows_host(host) or allow.allows_address(addr):
        return
    reason = blocked_reason(addr)
    if reason is not None:
        what = f"{addr} is a" if host == str(addr) else f"host {host!r} resolves to {addr}, a"
        raise UnsafeURLError(
            f"webhook URL refused: {what} {reason}; add it to [webhooks] allow_hosts in fusebox.toml "
            "if this is intended"
        )


def shorthand_ipv4(host: str) -> ipaddress.IPv4Address | None:
    """The address an IPv4 form other than the dotted quad stands for ('127.1', '2130706433', '0x7f.1',
    '0177.0.0.1'), read as the OS reads it (inet_aton); None for dotted quads and names."""
    try:
        packed = socket.inet_aton(host)
    except (OSError, ValueError):
        return None
    addr = ipaddress.IPv4Address(packed)
    return None if str(addr) == host else addr


async def system_resolve(host: str, port: int) -> list[str]:
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


def split_url(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of an http(s) URL, or UnsafeURLError saying what is wrong with it."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise UnsafeURLError(f"webhook URL is not a valid URL: {e}") from None
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise UnsafeURLError(f"webhook URL scheme {parts.scheme or '(none)'!r} refused: only http and https")
    host = parts.hostname
    if not host:
        raise UnsafeURLError("webhook URL has no host")
    return scheme, host, port or (443 if scheme == "https" else 80)


async def check_url(
    url: str, allow: AllowList | Sequence[str] = AllowList(), *, resolve: Resolve | None = None
) -> list[IPAddress]:
    """Validate a webhook URL; returns the addresses it resolves to.

    Every address the name resolves to must be public (or allow-listed): a name
    with one public and one private record is refused, as a connect could pick either.
    """
    if not isinstance(allow, AllowList):
        allow = AllowList.parse(allow)
    _, host, port = split_url(url)
    short = shorthand_ipv4(host)
    if short is not None:
        # The resolver reads these as an address, but the HTTP clients refuse (or misread) them, so
        # every delivery would fail: refuse at once, with what the address really is.
        reason = blocked_reason(short)
        what = f", a {reason}" if reason and not allow.allows_address(short) else ""
        raise UnsafeURLError(
            f"webhook URL refused: host {host!r} is IPv4 address {short}{what} written in a shorthand "
            f"form the HTTP client cannot deliver to; write it as {short}"
        )
    try:
        literal: IPAddress | None = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if literal is not None:
        check_address(host, literal, allow)
        return [literal]
    if allow.allows_host(host):
        return []
    try:
        found = await (resolve or system_resolve)(host, port)
    except OSError as e:
        raise UnsafeURLError(f"webhook URL host {host!r} does not resolve: {e.strerror or e}") from None
    if not found:
        raise UnsafeURLError(f"webhook URL host {host!r} does not resolve to any address")
    addrs: list[IPAddress] = []
    for a in found:
        addr = ipaddress.ip_address(a.split("%", 1)[0])  # drop an IPv6 zone id
        check_address(host, addr, allow)
        addrs.append(addr)
    return addrs


class GuardedResolver(AbstractResolver):
    """aiohttp resolver that refuses blocked addresses in the lookup the connection actually uses."""

    def __init__(self, allow: AllowList, inner: AbstractResolver | None = None) -> None:
        self.allow = allow
        self.inner = inner or ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self.inner.resolve(host, port, family)
        name = _norm_host(host)
        for r in results:
            try:
                check_address(name, ipaddress.ip_address(r["host"]), self.allow)
            except UnsafeURLError as e:
                # aiohttp wraps an OSError from a resolver into ClientConnectorDNSError (cause kept).
                raise BlockedAddressError(str(e)) from None
        return results

    async def close(self) -> None:
        await self.inner.close()
