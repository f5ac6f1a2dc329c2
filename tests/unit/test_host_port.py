"""HOST:PORT as people write it: listen addresses and --address, refused naming the part that is wrong."""

from __future__ import annotations

import pytest

from runner.host_port import capped, grpc_listen, host_port, quoted


@pytest.mark.parametrize("value, expected", [
    ("127.0.0.1:50051", ("127.0.0.1", 50051)), ("localhost:0", ("localhost", 0)), ("[::1]:65535", ("::1", 65535)),
    ("runner.internal:443", ("runner.internal", 443)), ("[fe80::1%eth0]:1", ("fe80::1%eth0", 1)),
])  # fmt: skip
def test_host_port_splits_what_it_accepts(value: str, expected: tuple[str, int]) -> None:
    assert host_port(value, "x") == expected


@pytest.mark.parametrize("value, said", [
    ("x", "is not HOST:PORT"), ("::1:80", "an IPv6 address goes in brackets"), ("[::1]80", "is not HOST:PORT"),
    ("[nothost]:80", "is not HOST:PORT"), (":80", "the host '' is not a host name"), ("a b:1", "the host 'a b'"),
    ("h:99999", "the port '99999' is not a port (0 to 65535)"), ("h:abc", "the port 'abc' is not a port"),
    ("h:", "the port '' is not a port"), ("h:\u0663", "the port '\u0663' is not a port"), ("", "is not HOST:PORT"),
])  # fmt: skip
def test_host_port_refuses_naming_the_part_that_is_wrong(value: str, said: str) -> None:
    with pytest.raises(ValueError, match=r"^--address ") as refused:
        host_port(value, "--address")
    assert said in str(refused.value)


def test_a_huge_value_is_quoted_capped_and_grpc_sockets_are_listen_addresses() -> None:
    huge = "x" * 1_000_000
    with pytest.raises(ValueError) as refused:
        grpc_listen(huge, "listen")
    assert len(str(refused.value)) < 400 and "(1000000 characters)" in str(refused.value)
    assert capped("0.0.0.0:1") == "0.0.0.0:1" and capped(huge) == quoted(huge)
    assert grpc_listen("unix:/run/mcp.sock", "listen") == "unix:/run/mcp.sock"
    with pytest.raises(ValueError):
        grpc_listen("unix:", "listen")
