"""The webhook SSRF guard: addresses after resolution, schemes, allow-lists, rebinding."""

from __future__ import annotations

import ipaddress
import re
import socket

import pytest

from shared.config import ConfigError, WebhookConfig, load_file_config
from shared.ssrf import (
    AllowList,
    BlockedAddressError,
    GuardedResolver,
    UnsafeURLError,
    blocked_cause,
    blocked_reason,
    check_url,
)


def fake_dns(table: dict[str, list[str]]):
    async def resolve(host: str, port: int) -> list[str]:
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return table[host]

    return resolve


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://127.0.0.1:8080/hook", "loopback"),
        ("http://127.8.9.10/", "loopback"),
        ("http://[::1]/", "loopback"),
        ("http://10.1.2.3/", "private"),
        ("http://172.16.5.4/", "private"),
        ("https://192.168.1.1/", "private"),
        ("http://[fd00::1]/", "private"),
        ("http://169.254.169.254/latest/meta-data/", "cloud metadata"),
        ("http://169.254.10.1/", "link-local"),
        ("http://[fe80::1]/", "link-local"),
        ("http://0.0.0.0/", "unspecified"),
        ("http://[::]/", "unspecified"),
        ("http://224.0.0.1/", "multicast"),
        ("http://[ff02::1]/", "multicast"),
        ("http://240.0.0.1/", "reserved"),
        ("http://100.64.0.1/", "CGNAT"),
        ("http://[::ffff:127.0.0.1]/", "loopback"),
        ("http://[::ffff:a9fe:a9fe]/", "cloud metadata"),
        ("http://[::ffff:10.0.0.1]/", "private"),
        ("http://[2002:a00:1::]/", "private"),  # 6to4 wrapping 10.0.0.1
        ("http://[64:ff9b::7f00:1]/", "loopback"),  # NAT64 wrapping 127.0.0.1
        ("http://192.0.2.10/", "special-purpose"),
    ],
)
async def test_blocked_literals_are_refused_with_the_reason(url: str, reason: str):
    with pytest.raises(UnsafeURLError, match=reason) as e:
        await check_url(url)
    assert "allow_hosts" in str(e.value)


@pytest.mark.parametrize(
    "addr", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8", "100.128.0.1"]
)
def test_public_addresses_pass(addr: str):
    assert blocked_reason(ipaddress.ip_address(addr)) is None


async def test_public_literal_url_passes_without_dns():
    assert await check_url("https://8.8.8.8/hook", resolve=fake_dns({})) == [ipaddress.ip_address("8.8.8.8")]


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("ftp://example.com/x", "scheme 'ftp'"),
        ("file:///etc/passwd", "scheme 'file'"),
        ("gopher://example.com/", "scheme 'gopher'"),
        ("example.com/hook", r"scheme '\(none\)'"),
        ("http:///nohost", "no host"),
        ("http://example.com:99999/", "not a valid URL"),
    ],
)
async def test_only_http_urls_with_a_host(url: str, why: str):
    with pytest.raises(UnsafeURLError, match=why):
        await check_url(url, resolve=fake_dns({"example.com": ["93.184.216.34"]}))


async def test_names_are_checked_after_resolution():
    dns = fake_dns(
        {
            "hooks.example.com": ["93.184.216.34"],
            "sneaky.example.com": ["10.0.0.7"],
            "mixed.example.com": ["93.184.216.34", "169.254.169.254"],
        }
    )
    assert await check_url("https://hooks.example.com/x", resolve=dns) == [
        ipaddress.ip_address("93.184.216.34")
    ]
    with pytest.raises(UnsafeURLError, match=r"'sneaky.example.com' resolves to 10.0.0.7, a private address"):
        await check_url("https://sneaky.example.com/x", resolve=dns)
    # One bad record is enough: the connect could pick it.
    with pytest.raises(UnsafeURLError, match="cloud metadata"):
        await check_url("https://mixed.example.com/x", resolve=dns)
    with pytest.raises(UnsafeURLError, match="does not resolve"):
        await check_url("https://nowhere.example.com/x", resolve=dns)


async def test_real_resolver_sees_localhost_and_numeric_forms_as_loopback():
    # Resolved by the system (/etc/hosts and inet_aton): no network needed.
    with pytest.raises(UnsafeURLError, match=r"'localhost' resolves to .* loopback"):
        await check_url("http://localhost:9/hook")
    with pytest.raises(UnsafeURLError, match="loopback"):
        await check_url("http://2130706433/hook")  # 127.0.0.1 as one decimal number


async def test_allow_list_by_address_network_and_host():
    dns = fake_dns({"hooks.internal": ["10.20.30.40"], "other.internal": ["10.99.0.1"]})
    assert await check_url("http://127.0.0.1:8080/", ["127.0.0.1"])
    with pytest.raises(UnsafeURLError, match="loopback"):
        await check_url("http://127.0.0.2:8080/", ["127.0.0.1"])
    assert await check_url("http://other.internal/", ["10.0.0.0/8"], resolve=dns)
    # An allow-listed name is trusted whatever it resolves to; other names are not.
    assert await check_url("http://HOOKS.internal./", ["hooks.internal"], resolve=dns) == []
    with pytest.raises(UnsafeURLError, match="private"):
        await check_url("http://other.internal/", ["hooks.internal"], resolve=dns)


async def test_dns_rebinding_is_caught_by_the_second_check():
    answers = [["93.184.216.34"], ["127.0.0.1"]]

    async def rebinding(host: str, port: int) -> list[str]:
        return answers.pop(0)

    assert await check_url("http://rebind.example/", resolve=rebinding)  # at submission
    with pytest.raises(UnsafeURLError, match="loopback"):
        await check_url("http://rebind.example/", resolve=rebinding)  # at delivery


class _Inner:
    def __init__(self, addrs: list[str]) -> None:
        self.addrs = addrs
        self.closed = False

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET):
        return [
            {"hostname": host, "host": a, "port": port, "family": family, "proto": 0, "flags": 0}
            for a in self.addrs
        ]

    async def close(self) -> None:
        self.closed = True


async def test_guarded_resolver_refuses_what_the_connection_would_use():
    bad = GuardedResolver(AllowList(), _Inner(["93.184.216.34", "192.168.0.9"]))  # type: ignore[arg-type]
    with pytest.raises(BlockedAddressError, match="private address") as e:
        await bad.resolve("hooks.example.com", 443)
    assert e.value.strerror == e.value.message  # what aiohttp's ClientConnectorError shows
    try:
        raise RuntimeError("wrapped") from e.value
    except RuntimeError as outer:
        assert blocked_cause(outer) is e.value
    assert blocked_cause(RuntimeError("other")) is None
    ok = GuardedResolver(AllowList.parse(["192.168.0.0/16"]), _Inner(["192.168.0.9"]))  # type: ignore[arg-type]
    assert [r["host"] for r in await ok.resolve("hooks.example.com", 443)] == ["192.168.0.9"]
    named = GuardedResolver(AllowList.parse(["hooks.lan"]), _Inner(["10.0.0.1"]))  # type: ignore[arg-type]
    assert len(await named.resolve("hooks.lan.", 80)) == 1
    await named.close()
    assert named.inner.closed  # type: ignore[attr-defined]


def test_allow_list_config_is_validated_at_load(tmp_path):
    with pytest.raises(ValueError, match="neither a hostname nor an address"):
        WebhookConfig(allow_hosts=["10.0.0.0/33"])
    cfg = tmp_path / "fusebox.toml"
    cfg.write_text('[webhooks]\nallow_hosts = ["bad host"]\n')
    with pytest.raises(ConfigError, match="neither a hostname"):
        load_file_config(cfg)
    cfg.write_text(
        '[webhooks]\nallow_hosts = ["127.0.0.1", "10.0.0.0/8", "hooks.lan"]\nschedule = [0, 0.2]\n'
    )
    wh = load_file_config(cfg).webhooks
    assert wh.schedule == [0, 0.2] and wh.timeout == 15 and wh.secret_env == "FUSEBOX_WEBHOOK_SECRET"
    with pytest.raises(ValueError, match="schedule"):
        WebhookConfig(schedule=[0, -1])


@pytest.mark.parametrize(
    ("host", "canonical"),
    [
        ("127.1", "127.0.0.1"),
        ("127.0.1", "127.0.0.1"),
        ("2130706433", "127.0.0.1"),
        ("0x7f.1", "127.0.0.1"),
        ("0x7f000001", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("017700000001", "127.0.0.1"),
        ("134744072", "8.8.8.8"),  # public, but no HTTP client delivers to it
        ("8.8.2056", "8.8.8.8"),
        ("0x8.0x8.0x8.0x8", "8.8.8.8"),
    ],
)
async def test_shorthand_ipv4_hosts_are_refused_at_submission(host: str, canonical: str):
    # Allow-listed or public, these once passed the check and then failed every delivery.
    dns = fake_dns({host: [canonical]})  # what getaddrinfo answers for them
    for allow in (["127.0.0.0/8"], []):
        pattern = rf"IPv4 address {re.escape(canonical)}\b.*write it as {re.escape(canonical)}$"
        with pytest.raises(UnsafeURLError, match=pattern):
            await check_url(f"http://{host}:8080/hook", allow, resolve=dns)
    # The system resolver reads them the same way: still refused, with the reason when it is blocked.
    with pytest.raises(UnsafeURLError) as e:
        await check_url(f"http://{host}/hook")
    assert ("loopback" in str(e.value)) == canonical.startswith("127.")


async def test_dotted_quads_and_names_are_not_shorthand():
    assert await check_url("http://8.8.8.8/hook") == [ipaddress.ip_address("8.8.8.8")]
    dns = fake_dns({"1e100.net": ["8.8.4.4"], "cafe": ["8.8.4.4"]})
    assert await check_url("http://1e100.net/hook", resolve=dns)
    assert await check_url("http://cafe/hook", resolve=dns)
