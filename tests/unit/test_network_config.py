"""Networked profiles: egress rules, credentials, remote servers and runtimes in the settings file; their secrets."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from runner.config import (
    DEFAULT_UPSTREAM_NETWORK,
    ConfigError,
    Credential,
    EgressRule,
    NetworkPolicy,
    SecretSource,
)
from runner.egress.rules import Rule
from runner.secret_sources import SecretUnavailable, egress_rules
from runner.settings_file import load_settings

TOKEN = "tok-4f9a-Secret-77"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MCP_RUNNER_CONFIG", "MCP_RUNNER_LISTEN", "MCP_RUNNER_INSTANCE"):
        monkeypatch.delenv(name, raising=False)


def write(directory: Path, name: str, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def problem(error: ConfigError, path: Path) -> str:
    """The message with the file's path cut out (it names the file; tmp paths also contain test names)."""
    assert str(path) in error.message
    return error.message.replace(str(path), "<file>")


def load_error(tmp_path: Path, text: str) -> str:
    path = write(tmp_path, "r.yaml", text)
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    return problem(caught.value, path)


NETWORKED = """
    profiles:
      net:
        image: python-servers
        command: [mcp-server-fetch]
        runtime: runsc
        network:
          egress:
            - "API.Example.COM.:443"
            - "*.Docs.Example.org:80"
            - "[2001:DB8::1]:8443"
            - host: Internal.Example
              port: 8080
              private: true
              headers:
                Authorization: {env: RUNNER_TEST_TOKEN, template: "Bearer {}"}
                X-Api-Key: {file: keys/api.txt}
"""


def test_string_and_mapping_egress_entries(tmp_path: Path) -> None:
    path = write(tmp_path / "conf", "r.yaml", NETWORKED)
    profile = load_settings(path).profiles["net"]
    assert profile.runtime == "runsc"
    assert profile.remote_url is None
    assert profile.command == ("mcp-server-fetch",)
    assert profile.network == NetworkPolicy(
        egress=(
            EgressRule(host="api.example.com", port=443),
            EgressRule(host="*.docs.example.org", port=80),
            EgressRule(host="2001:db8::1", port=8443),
            EgressRule(
                host="internal.example",
                port=8080,
                private=True,
                credentials=(
                    Credential("Authorization", SecretSource(env="RUNNER_TEST_TOKEN"), "Bearer {}"),
                    Credential(
                        "X-Api-Key", SecretSource(file=str((tmp_path / "conf" / "keys" / "api.txt").resolve())), "{}"
                    ),
                ),
            ),
        ),
        upstream=DEFAULT_UPSTREAM_NETWORK,
    )
    assert DEFAULT_UPSTREAM_NETWORK == "mcp-runner-egress"


def test_credential_file_resolves_against_the_settings_file_not_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path / "a" / "b", "r.yaml", NETWORKED)
    monkeypatch.chdir(tmp_path)
    network = load_settings("a/b/r.yaml").profiles["net"].network
    assert network is not None
    source = network.egress[3].credentials[1].source
    assert source == SecretSource(file=str((tmp_path / "a" / "b" / "keys" / "api.txt").resolve()))


def test_custom_upstream_and_default_runtime(tmp_path: Path) -> None:
    path = write(tmp_path, "r.yaml", """
        profiles:
          p:
            image: i
            command: [c]
            network: {egress: ["a.example:80"], upstream: corp-egress_1.net}
    """)
    profile = load_settings(path).profiles["p"]
    assert profile.network is not None and profile.network.upstream == "corp-egress_1.net"
    assert profile.runtime == "runc"


def test_toml_networked_profile(tmp_path: Path) -> None:
    path = write(tmp_path, "r.toml", """
        [profiles.p]
        image = "i"
        command = ["c"]
        runtime = "runsc"
        network = { egress = ["a.example:80", { host = "b.example", port = 81, private = true }] }
    """)
    profile = load_settings(path).profiles["p"]
    assert profile.runtime == "runsc"
    assert profile.network == NetworkPolicy(
        egress=(EgressRule("a.example", 80), EgressRule("b.example", 81, private=True))
    )


@pytest.mark.parametrize(
    ("url", "egress"),
    [
        ("http://mcp.example.com/mcp", '["mcp.example.com:80"]'),
        ("https://mcp.example.com/mcp", '["mcp.example.com:443"]'),
        ("http://mcp.example.com:8080/mcp?x=1", '["other.example:80", "mcp.example.com:8080"]'),
        ("https://api.mcp.example.com/mcp", '["*.mcp.example.com:443"]'),
        ("http://[2001:db8::1]:8080/mcp", '["[2001:db8::1]:8080"]'),
        ("http://MCP.Example.com/mcp", '["mcp.example.com:80"]'),
        ("http://mcp.example.com/mcp", '[{host: mcp.example.com, port: 80, headers: {Authorization: {env: X}}}]'),
    ],
)
def test_remote_profile(tmp_path: Path, url: str, egress: str) -> None:
    path = write(tmp_path, "r.yaml", f"""
        profiles:
          r:
            remote: {{url: "{url}"}}
            network: {{egress: {egress}}}
    """)
    profile = load_settings(path).profiles["r"]
    assert profile.remote_url == url
    assert profile.image == "python-servers"
    assert profile.command == ()
    assert profile.network is not None


def test_remote_profile_keeps_an_explicit_image(tmp_path: Path) -> None:
    path = write(tmp_path, "r.yaml", """
        profiles:
          r:
            image: node-servers
            remote: {url: "http://mcp.example.com/mcp"}
            network: {egress: ["mcp.example.com:80"]}
    """)
    assert load_settings(path).profiles["r"].image == "node-servers"


def test_builtin_profiles_have_no_network() -> None:
    profiles = load_settings().profiles
    assert profiles
    for profile in profiles.values():
        assert profile.network is None
        assert profile.remote_url is None
        assert profile.runtime == "runc"
        assert profile.command


NET = "profiles:\n  p:\n    image: i\n    command: [c]\n"
REMOTE = "profiles:\n  p:\n"


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        (
            REMOTE + '    image: i\n    command: [c]\n    remote: {url: "http://a.example/"}\n'
            '    network: {egress: ["a.example:80"]}\n',
            ["profiles.p: Value error, name exactly one of `command`", "`remote`"],
        ),
        (
            REMOTE + '    image: i\n    network: {egress: ["a.example:80"]}\n',
            ["profiles.p: Value error, name exactly one of `command`"],
        ),
        (
            REMOTE + '    remote: {url: "http://a.example/"}\n',
            ["profiles.p: Value error", "`remote` server needs `network.egress`"],
        ),
        (
            REMOTE + '    remote: {url: "http://a.example:8080/mcp"}\n    network: {egress: ["a.example:80"]}\n',
            ["profiles.p.remote.url", "a.example:8080 is not allowed by network.egress"],
        ),
        (
            REMOTE + '    remote: {url: "https://a.example/mcp"}\n    network: {egress: ["a.example:80"]}\n',
            ["profiles.p.remote.url", "a.example:443 is not allowed by network.egress"],
        ),
        (
            REMOTE + '    remote: {url: "http://b.example/mcp"}\n    network: {egress: ["*.b.example:80"]}\n',
            ["profiles.p.remote.url", "b.example:80 is not allowed by network.egress"],
        ),
        (
            REMOTE + '    remote: {url: "https://a.example/mcp"}\n'
            "    network: {egress: [{host: a.example, port: 443, headers: {Authorization: {env: X}}}]}\n",
            ["profiles.p.remote.url", "credentials only to http:// requests"],
        ),
        (
            REMOTE + '    remote: {url: "http://user:pw@a.example/mcp"}\n    network: {egress: ["a.example:80"]}\n',
            ["profiles.p.remote.url", "no credentials in the URL"],
        ),
        (
            REMOTE + '    remote: {url: "ftp://a.example/mcp"}\n    network: {egress: ["a.example:21"]}\n',
            ["profiles.p.remote.url", "use an http:// or https:// URL"],
        ),
        (
            REMOTE + '    remote: {url: "http:///mcp"}\n    network: {egress: ["a.example:80"]}\n',
            ["profiles.p.remote.url", "with a host"],
        ),
        (
            REMOTE + '    remote: {url: "http://a.example:99999/"}\n    network: {egress: ["a.example:80"]}\n',
            ["profiles.p.remote.url", "out of range"],
        ),
        (NET + '    network: {egress: ["no-port"]}\n', ["profiles.p.network.egress", "needs a port"]),
        (NET + '    network: {egress: ["host:0"]}\n', ["profiles.p.network.egress", "port 0 is out of range"]),
        (NET + '    network: {egress: ["a b:80"]}\n', ["profiles.p.network.egress", "not a valid host name"]),
        (NET + "    network: {egress: [{host: a.example, port: 70000}]}\n", ["profiles.p.network.egress.0.port"]),
        (NET + "    network: {egress: [{host: '*', port: 80}]}\n", ["profiles.p.network.egress.0.host", "wildcard"]),
        (
            NET + "    network: {egress: [{host: a.example, port: 80, color: red}]}\n",
            ["profiles.p.network.egress.0.color: Extra inputs are not permitted"],
        ),
        (
            NET + "    network: {egress: [{host: a.example, port: 80, headers: {'Bad Header': {env: X}}}]}\n",
            ["profiles.p.network.egress.0.headers", "header name 'Bad Header' is not a valid HTTP token"],
        ),
        (
            NET + "    network: {egress: [{host: a.example, port: 80, headers: {A: {env: X, template: Bearer}}}]}\n",
            ["profiles.p.network.egress.0.headers.A.template", "exactly once"],
        ),
        (
            NET + "    network: {egress: [{host: a.example, port: 80, headers: {A: {env: X, template: '{} {}'}}}]}\n",
            ["profiles.p.network.egress.0.headers.A.template", "exactly once"],
        ),
        (
            NET + "    network: {egress: [{host: a.example, port: 80, headers: {A: {env: 'not a name'}}}]}\n",
            ["profiles.p.network.egress.0.headers.A.env"],
        ),
        (NET + "    runtime: kata\n", ["profiles.p.runtime", "'runc' or 'runsc'"]),
        (NET + "    network: {egress: []}\n", ["profiles.p.network.egress", "at least 1 item"]),
        (NET + "    network: {}\n", ["profiles.p.network.egress", "Field required"]),
        (
            NET + '    network: {egress: ["a.example:80"], upstream: "-bad name"}\n',
            ["profiles.p.network.upstream", "should match pattern"],
        ),
        (NET + '    network: {egress: ["a.example:80"], via: x}\n', ["profiles.p.network.via: Extra inputs"]),
    ],
)
def test_errors_name_file_and_field(tmp_path: Path, text: str, fragments: list[str]) -> None:
    message = load_error(tmp_path, text)
    for fragment in fragments:
        assert fragment in message


@pytest.mark.parametrize("source", ["{env: X, file: y}", "{}"])
def test_credential_source_error_names_the_field(tmp_path: Path, source: str) -> None:
    message = load_error(
        tmp_path, NET + f"    network: {{egress: [{{host: a.example, port: 80, headers: {{A: {source}}}}}]}}\n"
    )
    assert "exactly one of `env` or `file`" in message
    assert "profiles.p.network.egress.0.headers.A" in message


@pytest.mark.parametrize("url", ["http://a b/mcp", "http://127.1/mcp", "http://bücher.example/mcp"])
def test_bad_remote_host_names_remote_url(tmp_path: Path, url: str) -> None:
    text = REMOTE + f'    remote: {{url: "{url}"}}\n    network: {{egress: ["a.example:80"]}}\n'
    message = load_error(tmp_path, text)
    assert "profiles.p.remote.url" in message


@pytest.mark.parametrize("header", ["Host", "Proxy-Authorization", "Content-Length", "Transfer-Encoding"])
def test_reserved_header_names_are_refused_at_load(tmp_path: Path, header: str) -> None:
    message = load_error(
        tmp_path, NET + f"    network: {{egress: [{{host: a.example, port: 80, headers: {{{header}: {{env: X}}}}}}]}}\n"
    )
    assert "profiles.p.network.egress.0.headers" in message and header in message


@pytest.mark.parametrize("template", ["Bearer \\u20ac {}", "Bearer\\x01{}"])
def test_template_the_proxy_would_refuse_is_refused_at_load(tmp_path: Path, template: str) -> None:
    message = load_error(
        tmp_path,
        NET + "    network: {egress: [{host: a.example, port: 80, headers: {A: {env: X, template: "
        f'"{template}"}}}}}}]}}\n',
    )
    assert "profiles.p.network.egress.0.headers.A.template" in message


# ------------------------------------------------------------------ secret_sources.egress_rules


def _policy(*credentials: Credential, host: str = "api.example.com", port: int = 80) -> NetworkPolicy:
    return NetworkPolicy(
        egress=(EgressRule("open.example", 443), EgressRule(host, port, private=True, credentials=credentials))
    )


def test_egress_rules_fill_header_values_from_env_and_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNNER_TEST_TOKEN", TOKEN)
    key_file = tmp_path / "key.txt"
    key_file.write_text("file-key-1234\n", encoding="utf-8")
    rules, used = egress_rules(
        _policy(
            Credential("Authorization", SecretSource(env="RUNNER_TEST_TOKEN"), "Bearer {}"),
            Credential("X-Api-Key", SecretSource(file=str(key_file))),
        )
    )
    assert rules == (
        Rule("open.example", 443),
        Rule(
            "api.example.com",
            80,
            private=True,
            headers=(("Authorization", f"Bearer {TOKEN}"), ("X-Api-Key", "file-key-1234")),
        ),
    )
    assert used == (TOKEN, "file-key-1234")


def test_egress_rules_without_credentials_use_no_secrets() -> None:
    rules, used = egress_rules(NetworkPolicy(egress=(EgressRule("*.example.com", 443),)))
    assert rules == (Rule("*.example.com", 443),)
    assert used == ()


def test_egress_rules_read_the_secret_at_each_call(monkeypatch: pytest.MonkeyPatch) -> None:
    policy = _policy(Credential("Authorization", SecretSource(env="RUNNER_TEST_TOKEN"), "Bearer {}"))
    monkeypatch.setenv("RUNNER_TEST_TOKEN", "first-value")
    assert egress_rules(policy)[1] == ("first-value",)
    monkeypatch.setenv("RUNNER_TEST_TOKEN", "rotated-value")
    assert egress_rules(policy)[0][1].headers == (("Authorization", "Bearer rotated-value"),)


def test_missing_env_names_header_and_host_not_a_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNNER_TEST_OTHER", TOKEN)
    monkeypatch.delenv("RUNNER_TEST_MISSING", raising=False)
    policy = _policy(
        Credential("X-Ok", SecretSource(env="RUNNER_TEST_OTHER")),
        Credential("Authorization", SecretSource(env="RUNNER_TEST_MISSING"), "Bearer {}"),
    )
    with pytest.raises(SecretUnavailable) as caught:
        egress_rules(policy)
    message = caught.value.message
    assert "Authorization" in message and "api.example.com:80" in message
    assert "RUNNER_TEST_MISSING" in message
    assert TOKEN not in message


def test_missing_file_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(SecretUnavailable, match=r"X-Key for api\.example\.com:80"):
        egress_rules(_policy(Credential("X-Key", SecretSource(file=str(tmp_path / "absent")))))


@pytest.mark.parametrize("value", [f"{TOKEN}\nHost: evil.example", f"{TOKEN}\rX: y", f"line1\r\n{TOKEN}"])
def test_multi_line_env_secret_is_refused(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("RUNNER_TEST_TOKEN", value)
    with pytest.raises(SecretUnavailable) as caught:
        egress_rules(_policy(Credential("Authorization", SecretSource(env="RUNNER_TEST_TOKEN"), "Bearer {}")))
    assert "Authorization" in caught.value.message and "api.example.com:80" in caught.value.message
    assert TOKEN not in caught.value.message


def test_multi_line_file_secret_is_refused(tmp_path: Path) -> None:
    key_file = tmp_path / "key.txt"
    key_file.write_text(f"{TOKEN}\nsecond line\n", encoding="utf-8")
    with pytest.raises(SecretUnavailable, match="must not contain CR, LF") as caught:
        egress_rules(_policy(Credential("X-Key", SecretSource(file=str(key_file)))))
    assert TOKEN not in caught.value.message


@pytest.mark.parametrize("value", [f"{TOKEN}\x01", f"{TOKEN}\x7f", f"{TOKEN}\u20ac"])
def test_secret_with_control_or_non_latin1_character_is_unavailable(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("RUNNER_TEST_TOKEN", value)
    with pytest.raises(SecretUnavailable):
        egress_rules(_policy(Credential("Authorization", SecretSource(env="RUNNER_TEST_TOKEN"), "Bearer {}")))
