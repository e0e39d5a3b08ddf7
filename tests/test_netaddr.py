"""Source keys for the per-IP limit and trusted address ranges (pure, no sockets)."""

from __future__ import annotations

import ipaddress

import pytest

from asyncchat.netaddr import LOOPBACK, in_networks, parse_networks, source_key


def test_ipv4_counts_by_address() -> None:
    assert source_key("192.0.2.7", 64) == "192.0.2.7"
    assert source_key("192.0.2.8", 1) == "192.0.2.8"
    assert source_key("::ffff:192.0.2.7", 64) == "192.0.2.7"  # IPv4-mapped: the same host


def test_ipv6_counts_by_prefix() -> None:
    assert source_key("2001:db8:1:2::1", 64) == "2001:db8:1:2::/64"
    assert source_key("2001:db8:1:2:ffff:ffff:ffff:ffff", 64) == "2001:db8:1:2::/64"
    assert source_key("2001:db8:1:3::1", 64) == "2001:db8:1:3::/64"
    assert source_key("2001:db8:1:2::1", 48) == "2001:db8:1::/48"
    assert source_key("2001:db8:1:2::1", 56) == source_key("2001:db8:1:ff::1", 56) == "2001:db8:1::/56"
    assert source_key("2001:0db8:0001:0002:0000:0000:0000:0001", 128) == "2001:db8:1:2::1"
    assert source_key("::1", 64) == "::/64"
    assert source_key("fe80::1%eth0", 64) == "fe80::/64"


def test_non_addresses_are_their_own_key() -> None:
    assert source_key("", 64) == ""
    assert source_key("unix", 64) == "unix"
    assert source_key("not:an:address", 64) == "not:an:address"


@pytest.mark.parametrize("bits", [0, 129, -1])
def test_prefix_out_of_range_raises(bits: int) -> None:
    with pytest.raises(ValueError, match="ipv6_prefix must be between 1 and 128"):
        source_key("::1", bits)


def test_loopback_is_trusted_by_default_and_nothing_else() -> None:
    for ip in ["127.0.0.1", "127.9.8.7", "::1", "::ffff:127.0.0.1"]:
        assert in_networks(ip, LOOPBACK), ip
    for ip in ["10.0.0.1", "192.168.1.2", "::2", "fe80::1%lo", "2001:db8::1", "", "localhost"]:
        assert not in_networks(ip, LOOPBACK), ip
    assert not in_networks("127.0.0.1", ())


def test_parse_networks() -> None:
    lan = ipaddress.ip_network("fd00::/8")
    networks = parse_networks(["192.168.1.0/24", " 10.1.2.3 ", "::1", lan])
    assert [str(n) for n in networks] == ["192.168.1.0/24", "10.1.2.3/32", "::1/128", "fd00::/8"]
    assert in_networks("192.168.1.77", networks)
    assert in_networks("fd12::5%eth0", networks)
    assert not in_networks("192.168.2.1", networks)
    assert parse_networks([]) == ()
    with pytest.raises(ValueError, match=r"not an address range: '10\.0\.0\.1/8'"):
        parse_networks(["10.0.0.1/8"])
    with pytest.raises(ValueError, match="not an address range: 'lan'"):
        parse_networks(["lan"])
    with pytest.raises(TypeError):
        parse_networks("127.0.0.0/8")
