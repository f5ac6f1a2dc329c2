"""Egress allowlist rules, target parsing, the address policy and the config wire format: pure, nothing contacted."""

from __future__ import annotations

import ipaddress
import json
import re

import pytest

from runner.egress.rules import (
    ProxyConfig,
    ProxyLimits,
    Rule,
    address_refusal,
    config_from_wire,
    first_match,
    limits_from_wire,
    parse_host_pattern,
    parse_request_target,
    parse_target,
    rule_from_wire,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("example.com", "example.com"),
        ("API.Example.COM", "api.example.com"),
        ("example.com.", "example.com"),
        ("allowed-web", "allowed-web"),
        ("xn--bcher-kva.de", "xn--bcher-kva.de"),
        ("*.example.com", "*.example.com"),
        ("*.Example.com.", "*.example.com"),
        ("a1-b2.c3", "a1-b2.c3"),
        ("1.2.3.4", "1.2.3.4"),
        ("2001:DB8:0::1", "2001:db8::1"),
        ("::ffff:10.0.0.1", "::ffff:a00:1"),
        ("a" * 63 + ".com", "a" * 63 + ".com"),
    ],
)
def test_parse_host_pattern_normalises(text: str, expected: str) -> None:
    assert parse_host_pattern(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("bücher.de", "punycode (xn--)"),
        ("*", "wildcard"),
        ("*.", "wildcard"),
        ("a.*.example.com", "wildcard"),
        ("*.*.example.com", "not a valid host name"),
        ("*.1.2.3.4", "wildcard needs a domain name"),
        ("-a.example.com", "not a valid host name"),
        ("a-.example.com", "not a valid host name"),
        ("exa_mple.com", "not a valid host name"),
        ("a..com", "not a valid host name"),
        ("example.com..", "not a valid host name"),
        ("a" * 64 + ".com", "not a valid host name"),
        (".".join(["a" * 63] * 4), "1-253"),
        ("ex ample.com", "not a valid host name"),
        ("[::1]", "without brackets"),
        ("::1::2", "not a valid IPv6"),
        ("fe80::1%eth0", "zone"),
        ("127.1", "dotted quad"),
        ("0x7f000001", "dotted quad"),
        ("010.0.0.1", "dotted quad"),
        ("123", "dotted quad"),
    ],
)
def test_parse_host_pattern_rejects(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_host_pattern(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("example.com:443", ("example.com", 443)),
        ("Example.com.:1", ("example.com", 1)),
        ("10.0.0.1:65535", ("10.0.0.1", 65535)),
        ("[2001:DB8::1]:8443", ("2001:db8::1", 8443)),
        ("[::1]:80", ("::1", 80)),
        ("*.example.com:443", ("*.example.com", 443)),
    ],
)
def test_parse_target(text: str, expected: tuple[str, int]) -> None:
    assert parse_target(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("example.com", "needs a port"),
        ("example.com:", "port must be"),
        ("example.com:0", "out of range"),
        ("example.com:65536", "out of range"),
        ("example.com:080808", "port must be"),
        ("example.com:-1", "port must be"),
        ("example.com:+80", "port must be"),
        ("example.com:٤٤٣", "port must be"),
        ("example.com:443 ", "port must be"),
        ("2001:db8::1:443", "brackets"),
        ("[2001:db8::1]", "needs a port"),
        ("[2001:db8::1]443", "needs a port"),
        ("[2001:db8::1:443", "missing"),
        ("[example.com]:443", "only for IPv6"),
        (":443", "empty"),
        ("bad host:443", "not a valid host name"),
    ],
)
def test_parse_target_rejects(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_target(text)


@pytest.mark.parametrize(
    ("method", "target", "expected"),
    [
        ("CONNECT", "api.example.com:443", ("api.example.com", 443, "")),
        ("GET", "http://Example.com/a/b?c=d", ("example.com", 80, "/a/b?c=d")),
        ("GET", "HTTP://example.com", ("example.com", 80, "/")),
        ("GET", "http://example.com?q", ("example.com", 80, "/?q")),
        ("POST", "http://example.com:8080/x#frag", ("example.com", 8080, "/x")),
        ("GET", "http://[::1]/x", ("::1", 80, "/x")),
        ("GET", "http://[::1]:81", ("::1", 81, "/")),
    ],
)
def test_parse_request_target(method: str, target: str, expected: tuple[str, int, str]) -> None:
    assert parse_request_target(method, target) == expected


@pytest.mark.parametrize(
    ("method", "target", "message"),
    [
        ("GET", "https://example.com/", "use CONNECT"),
        ("GET", "/index.html", "HTTP proxy"),
        ("GET", "*", "HTTP proxy"),
        ("GET", "ftp://example.com/", "HTTP proxy"),
        ("GET", "http://user:pw@example.com/", "not supported"),
        ("GET", "http://example.com:/", "port must be"),
        ("GET", "http://::1/", "brackets"),
        ("GET", "http:///x", "empty"),
        ("CONNECT", "*.example.com:443", "wildcard"),
        ("GET", "http://*.example.com/", "wildcard"),
    ],
)
def test_parse_request_target_rejects(method: str, target: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_request_target(method, target)


@pytest.mark.parametrize(
    ("rule_host", "host", "port", "expected"),
    [
        ("example.com", "example.com", 443, True),
        ("example.com", "example.com", 80, False),
        ("example.com", "www.example.com", 443, False),
        ("example.com", "notexample.com", 443, False),
        ("*.example.com", "api.example.com", 443, True),
        ("*.example.com", "a.b.example.com", 443, True),
        ("*.example.com", "example.com", 443, False),
        ("*.example.com", "badexample.com", 443, False),
        ("*.example.com", "api.example.com", 80, False),
        ("*.example.com", "*.example.com", 443, False),
        ("*.example.com", "example.com.evil.net", 443, False),
        ("10.0.0.1", "10.0.0.1", 443, True),
        ("10.0.0.1", "10.0.0.2", 443, False),
        ("2001:db8::1", "2001:db8::1", 443, True),
        ("example.com", "93.184.216.34", 443, False),
    ],
)
def test_rule_matches(rule_host: str, host: str, port: int, expected: bool) -> None:
    assert Rule(rule_host, 443).matches(host, port) is expected


def test_rule_label_and_first_match() -> None:
    web = Rule("example.com", 80)
    wild = Rule("*.example.com", 443, private=True)
    v6 = Rule("2001:db8::1", 8443)
    assert (web.label(), wild.label(), v6.label()) == ("example.com:80", "*.example.com:443", "[2001:db8::1]:8443")
    rules = [web, wild, v6, Rule("*.example.com", 443)]
    assert first_match(rules, "api.example.com", 443) is wild
    assert first_match(rules, "2001:db8::1", 8443) is v6
    assert first_match(rules, "example.com", 443) is None


def test_rule_refuses_unnormalised_or_invalid_values() -> None:
    with pytest.raises(ValueError, match="not normalised"):
        Rule("Example.com", 443)
    with pytest.raises(ValueError, match="out of range"):
        Rule("example.com", 0)
    with pytest.raises(ValueError, match="control"):
        Rule("example.com", 80, headers=(("X-Key", "a\r\nb"),))


def test_rule_from_wire() -> None:
    rule = rule_from_wire(
        {"host": "API.example.com", "port": 80, "private": True, "headers": [["Authorization", "Bearer x"]]}
    )
    assert rule == Rule("api.example.com", 80, True, (("Authorization", "Bearer x"),))
    assert rule_from_wire({"host": "*.example.com", "port": 443}) == Rule("*.example.com", 443)


@pytest.mark.parametrize(
    ("wire", "message"),
    [
        ("example.com:443", "JSON object"),
        ({"port": 443}, '"host"'),
        ({"host": 5, "port": 443}, '"host"'),
        ({"host": "example.com"}, '"port"'),
        ({"host": "example.com", "port": "443"}, '"port"'),
        ({"host": "example.com", "port": True}, '"port"'),
        ({"host": "example.com", "port": 70000}, "out of range"),
        ({"host": "bad host", "port": 443}, "not a valid host name"),
        ({"host": "example.com", "port": 443, "private": "yes"}, '"private"'),
        ({"host": "example.com", "port": 443, "extra": 1}, "unknown rule field"),
        ({"host": "example.com", "port": 443, "headers": {"A": "b"}}, '"headers"'),
        ({"host": "example.com", "port": 443, "headers": [["A"]]}, r"headers\[0\]"),
        ({"host": "example.com", "port": 443, "headers": [["A", 1]]}, r"headers\[0\]"),
        ({"host": "example.com", "port": 443, "headers": [["Bad Name", "v"]]}, "not a valid HTTP token"),
        ({"host": "example.com", "port": 443, "headers": [["X:Y", "v"]]}, "not a valid HTTP token"),
        ({"host": "example.com", "port": 443, "headers": [["", "v"]]}, "not a valid HTTP token"),
        ({"host": "example.com", "port": 443, "headers": [["X-Key", "a\r\nX-Evil: 1"]]}, "CR, LF"),
        ({"host": "example.com", "port": 443, "headers": [["X-Key", "a\nb"]]}, "CR, LF"),
        ({"host": "example.com", "port": 443, "headers": [["X-Key", "a\x00b"]]}, "NUL"),
        ({"host": "example.com", "port": 443, "headers": [["X-Key", "€"]]}, "ASCII"),
        ({"host": "example.com", "port": 443, "headers": [["Host", "evil.net"]]}, "managed by the proxy"),
        ({"host": "example.com", "port": 443, "headers": [["Content-Length", "0"]]}, "managed by the proxy"),
        ({"host": "example.com", "port": 443, "headers": [["connection", "keep-alive"]]}, "managed by the proxy"),
    ],
)
def test_rule_from_wire_rejects(wire: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        rule_from_wire(wire)


def test_header_errors_never_quote_the_value() -> None:
    with pytest.raises(ValueError) as caught:
        rule_from_wire({"host": "example.com", "port": 80, "headers": [["X-Key", "s3cret\r\n"]]})
    assert "s3cret" not in str(caught.value)


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("127.0.0.1", "loopback"),
        ("127.255.0.9", "loopback"),
        ("10.1.2.3", "private"),
        ("172.18.0.2", "private"),
        ("192.168.1.1", "private"),
        ("169.254.1.1", "link-local"),
        ("169.254.169.254", "metadata"),
        ("fd00:ec2::254", "metadata"),
        ("100.100.100.200", "metadata"),
        ("100.64.1.1", "shared"),
        ("::1", "loopback"),
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:169.254.169.254", "metadata"),
        ("64:ff9b::a00:1", "private"),
        ("64:ff9b::a9fe:a9fe", "metadata"),
        ("2002:a00:1::1", "private"),
        ("fe80::1", "link-local"),
        ("fe80::1%eth0", "link-local"),
        ("fc00::1", "private"),
        ("fec0::1", "private"),
        ("feff:ffff::1", "private"),
        ("fec0::1%eth0", "private"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("240.0.0.1", "reserved"),
        ("192.0.2.1", "not-global"),
        ("2001:db8::1", "not-global"),
        ("3fff::1", "not-global"),
        ("3fff:fff:ffff::1", "not-global"),
        ("::10.0.0.1", "reserved"),  # IPv4-compatible
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "not-global"),  # Teredo
        ("64:ff9b:1::a00:1", "reserved"),  # local-use NAT64
        ("8.8.8.8", None),
        ("2606:4700::1111", None),
        ("::ffff:8.8.8.8", None),
        ("64:ff9b::808:808", None),
    ],
)
def test_address_refusal(address: str, expected: str | None) -> None:
    assert address_refusal(ipaddress.ip_address(address)) == expected


def test_config_from_wire() -> None:
    config = config_from_wire(
        {
            "listen_host": "127.0.0.1",
            "listen_port": 0,
            "rules": [{"host": "example.com", "port": 80}],
            "limits": {"max_connections": 2, "idle_timeout_s": 1.5, "head_timeout_s": 3},
        }
    )
    assert config == ProxyConfig(
        (Rule("example.com", 80),),
        "127.0.0.1",
        0,
        ProxyLimits(max_connections=2, idle_timeout_s=1.5, head_timeout_s=3),
    )
    assert config_from_wire({"rules": []}) == ProxyConfig(())
    assert ProxyConfig(()).listen_host == "0.0.0.0"
    assert ProxyConfig(()).listen_port == 3128


@pytest.mark.parametrize(
    ("wire", "message"),
    [
        ([], "JSON object"),
        ({}, '"rules"'),
        ({"rules": {}}, '"rules"'),
        ({"rules": [], "port": 1}, "unknown config field"),
        ({"rules": [], "listen_host": ""}, '"listen_host"'),
        ({"rules": [], "listen_port": 65536}, '"listen_port"'),
        ({"rules": [], "listen_port": "1"}, '"listen_port"'),
        ({"rules": [{"host": "example.com", "port": 80}, {"host": "x"}]}, r"rules\[1\]"),
        ({"rules": [], "limits": []}, '"limits"'),
        ({"rules": [], "limits": {"max_conns": 1}}, "unknown limit"),
        ({"rules": [], "limits": {"max_connections": 1.5}}, "positive integer"),
        ({"rules": [], "limits": {"max_connections": 0}}, "positive integer"),
        ({"rules": [], "limits": {"max_connections": True}}, "positive integer"),
        ({"rules": [], "limits": {"idle_timeout_s": -1}}, "positive number"),
        ({"rules": [], "limits": {"idle_timeout_s": float("inf")}}, "positive number"),
        ({"rules": [], "limits": {"idle_timeout_s": "5"}}, "positive number"),
    ],
)
def test_config_from_wire_rejects(wire: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        config_from_wire(wire)


def test_limits_from_wire_keeps_defaults() -> None:
    assert limits_from_wire({}) == ProxyLimits()
    assert limits_from_wire({"head_bytes": 100}) == ProxyLimits(head_bytes=100)


def test_config_to_wire_round_trips_through_the_proxys_parser() -> None:
    config = ProxyConfig(
        rules=(Rule("api.example.com", 80, headers=(("Authorization", "Bearer x"),)), Rule("*.example.org", 443)),
        listen_host="172.30.0.2",
        limits=ProxyLimits(max_connections=8),
    )
    assert config_from_wire(json.loads(json.dumps(config.to_wire()))) == config
    assert "limits" not in ProxyConfig(()).to_wire()
