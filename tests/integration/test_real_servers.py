"""The servers the runner ships, through the real service: nothing honest is held back, flagged or refused.

The hardening refuses and flags a great deal (invalid tool names, poisoning in any field, look-alikes, caps,
budgets, rates); a runner that refuses honest servers is broken. Each built-in profile lists all its tools,
resources and prompts with no finding, and the calls a client typically makes succeed with no finding either.
The git server works on a repository this module makes; fetch reaches only an echo server on a Docker network
this module creates.
"""

from __future__ import annotations

import base64
import json
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
import yaml

from runner.api._proto.mcp_runner.v1 import runner_pb2 as pb
from runner.client import Progress, RunnerClient, ToolResult
from runner.sandbox.base import SESSION_LABEL
from runner.sandbox.egress import ROLE_LABEL
from tests.integration.conftest import Service, start_service, stop_service

pytestmark = pytest.mark.integration

SERVERS = Path(__file__).resolve().parents[1] / "servers"
TEST_LABEL = "mcp-runner.test"
# A 1x1 PNG: read_media_file's answer is a base64 image block.
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)
# Honest text the look-alike folding and injection rules must leave alone: Cyrillic, Greek, accents, CJK.
WORLD_TEXT = "Привет, мир! Погода хорошая. Καλημέρα κόσμε. Café naïve résumé. 日本語のテキスト。한국어\n"

EXPECTED_TOOLS = {
    "time": {"get_current_time", "convert_time"},
    "fetch": {"fetch"},
    "git": {"git_status", "git_diff_unstaged", "git_diff_staged", "git_diff", "git_commit", "git_add", "git_reset",
            "git_log", "git_create_branch", "git_checkout", "git_show", "git_branch"},
    "everything": {"echo", "get-annotated-message", "get-env", "get-resource-links", "get-resource-reference",
                   "get-structured-content", "get-sum", "get-tiny-image", "gzip-file-as-resource",
                   "toggle-simulated-logging", "toggle-subscriber-updates", "trigger-long-running-operation"},
    "filesystem": {"read_file", "read_text_file", "read_media_file", "read_multiple_files", "write_file", "edit_file",
                   "create_directory", "list_directory", "list_directory_with_sizes", "directory_tree", "move_file",
                   "search_files", "get_file_info", "list_allowed_directories"},
    "memory": {"create_entities", "create_relations", "add_observations", "delete_entities", "delete_observations",
               "delete_relations", "read_graph", "search_nodes", "open_nodes"},
}


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)


@pytest.fixture(scope="module")
def web(images: dict[str, str]) -> Iterator[str]:
    """A Docker network of this module's own with an HTTP echo server on it (alias ``honest-web``)."""
    api = docker.from_env().api
    network = f"mcpr-test-{secrets.token_hex(4)}-real"
    api.create_network(network, driver="bridge", labels={TEST_LABEL: "real-servers"})
    container = None
    try:
        container = api.create_container(
            image=images["python-servers"], entrypoint=["/usr/bin/python3", "/srv/servers/http_echo.py"],
            command=["honest-web", "8080"], labels={TEST_LABEL: "real-servers"}, user="10001:10001",
            host_config=api.create_host_config(network_mode=network,
                                               binds={str(SERVERS): {"bind": "/srv/servers", "mode": "ro"}}),
            networking_config=api.create_networking_config({network: api.create_endpoint_config(
                aliases=["honest-web"])}),
        )["Id"]
        api.start(container)
        yield network
    finally:
        if container is not None:
            api.remove_container(container, force=True)
        api.remove_network(network)


@pytest.fixture(scope="module")
def real(web: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """The service with the built-in profiles, plus git over a repository, files over a directory, fetch on ``web``."""
    tmp = tmp_path_factory.mktemp("real")
    data, repo = tmp / "data", tmp / "repo"
    data.mkdir()
    (data / "world.txt").write_text(WORLD_TEXT * 40)
    (data / "prose.txt").write_text(("The quick brown fox jumps over the lazy dog. " * 20 + "\n") * 1000)  # 0.9 MB
    (data / "numbers.json").write_text(json.dumps(list(range(50_000))))
    (data / "pixel.png").write_bytes(PNG)
    repo.mkdir()
    _git(repo, "init", "-q", "-b", "main")
    _git(repo, "config", "user.name", "Dev")
    _git(repo, "config", "user.email", "dev@example.com")
    (repo / "README.md").write_text("# demo\n")
    _git(repo, "add", ".")
    _git(repo, "commit", "-qm", "first commit")
    (repo / "README.md").write_text("# demo\nmore\n")
    _git(repo, "commit", "-qam", "second: add a line")
    (repo / "README.md").write_text("# demo\nmore\nunstaged\n")
    subprocess.run(["chmod", "-R", "a+rX", str(tmp)], check=True)  # the sandbox user reads the mounts
    settings = {
        "reap_interval_s": 0.5,
        "defaults": {"call_timeout_s": 20},
        "profiles": {
            "files-data": {"image": "node-servers", "command": ["mcp-server-filesystem", "/data"],
                           "mounts": [{"source": str(data), "target": "/data"}]},
            # The repository belongs to the host's user, not the sandbox's: git wants it named safe.
            "git-repo": {"image": "python-servers", "command": ["mcp-server-git"],
                         "mounts": [{"source": str(repo), "target": "/repo"}],
                         "env": {"GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_COUNT": "1",
                                 "GIT_CONFIG_KEY_0": "safe.directory", "GIT_CONFIG_VALUE_0": "*"}},
            "fetch-web": {"image": "python-servers", "command": ["mcp-server-fetch", "--ignore-robots-txt"],
                          "network": {"egress": [{"host": "honest-web", "port": 8080, "private": True}],
                                      "upstream": web}},
        },
    }
    config = tmp / "settings.yaml"
    config.write_text(yaml.safe_dump({**settings, "pool": {}}))
    service = start_service(tmp, f"real-{secrets.token_hex(4)}", config=config)
    yield service
    stop_service(service)


def _clean(findings: Any, what: str) -> None:
    assert [(f.kind, f.action, f.where) for f in findings] == [], what


def _ok(result: ToolResult, what: str) -> ToolResult:
    assert not result.is_error, (what, result.text[:500])
    _clean(result.findings, what)
    return result


@pytest.mark.parametrize("profile", sorted(EXPECTED_TOOLS))
def test_every_builtin_profile_lists_everything_it_offers_with_no_finding(real: Service, profile: str) -> None:
    with real.client() as client, client.session(profile) as opened:
        sid, stub, metadata = opened.session_id, client._stub, client._metadata
        _clean(opened.findings, f"{profile}: open")
        assert EXPECTED_TOOLS[profile] <= {t.name for t in opened.tools}, profile
        listed = stub.ListTools(pb.ListToolsRequest(session_id=sid), metadata=metadata)
        _clean(listed.findings, f"{profile}: tools/list")
        assert {t.name for t in listed.tools} == {t.name for t in opened.tools}
        for tool in listed.tools:
            json.loads(tool.input_schema_json)
        capabilities = {"everything": {"resources", "prompts"}, "memory": {"resources"}, "fetch": {"prompts"}}
        offered = capabilities.get(profile, set())
        if "resources" in offered:
            resources = stub.ListResources(pb.ListResourcesRequest(session_id=sid), metadata=metadata)
            _clean(resources.findings, f"{profile}: resources/list")
            assert resources.resources, profile
        if "prompts" in offered:
            prompts = stub.ListPrompts(pb.ListPromptsRequest(session_id=sid), metadata=metadata)
            _clean(prompts.findings, f"{profile}: prompts/list")
            assert prompts.prompts, profile


def test_everything_typical_calls_resources_and_prompts(real: Service) -> None:
    with real.client() as client, client.session("everything") as opened:
        sid = opened.session_id
        assert opened.server.instructions  # its instructions, given to an agent, pass unflagged
        assert _ok(client.call_tool(sid, "echo", {"message": "hello world"}), "echo").text == "Echo: hello world"
        assert "5" in _ok(client.call_tool(sid, "get-sum", {"a": 2, "b": 3}), "get-sum").text
        for kind in ("error", "success", "debug"):
            annotated = _ok(client.call_tool(sid, "get-annotated-message", {"messageType": kind, "includeImage": True}),
                            f"get-annotated-message {kind}")
            assert [c.WhichOneof("kind") for c in annotated.content] == ["text", "image"]
        links = _ok(client.call_tool(sid, "get-resource-links", {"count": 3}), "get-resource-links")
        assert sum(c.WhichOneof("kind") == "resource_link" for c in links.content) == 3
        for kind in ("Text", "Blob"):
            _ok(client.call_tool(sid, "get-resource-reference", {"resourceType": kind, "resourceId": 2}), kind)
        structured = _ok(client.call_tool(sid, "get-structured-content", {"location": "New York"}), "structured")
        assert set(structured.structured_content) == {"temperature", "conditions", "humidity"}
        image = _ok(client.call_tool(sid, "get-tiny-image", {}), "get-tiny-image")
        assert any(c.WhichOneof("kind") == "image" and c.image.data for c in image.content)
        _ok(client.call_tool(sid, "get-env", {}), "get-env")

        items = list(client.call_tool_stream(sid, "trigger-long-running-operation", {"duration": 1, "steps": 3}))
        assert sum(isinstance(i, Progress) for i in items) == 3
        assert isinstance(items[-1], ToolResult)
        _ok(items[-1], "trigger-long-running-operation")

        uris = [r.uri for r in client.list_resources(sid)]
        for uri in [*uris, "demo://resource/dynamic/text/1", "demo://resource/dynamic/blob/2"]:
            [contents] = client.read_resource(sid, uri)
            assert contents.text or contents.blob, uri
        for name, arguments in [("simple-prompt", {}), ("args-prompt", {"city": "Paris", "state": "TX"}),
                                ("completable-prompt", {"department": "Engineering", "name": "Alice"}),
                                ("resource-prompt", {"resourceType": "Text", "resourceId": "1"}),
                                ("resource-prompt", {"resourceType": "Blob", "resourceId": "2"})]:
            prompt = client.get_prompt(sid, name, arguments)
            assert prompt.messages, name
            _clean(prompt.findings, name)


def test_time_filesystem_and_memory_typical_calls(real: Service) -> None:
    with real.client() as client:
        with client.session("time") as opened:
            now = _ok(client.call_tool(opened.session_id, "get_current_time", {"timezone": "Europe/Paris"}), "now")
            assert now.structured_content["timezone"] == "Europe/Paris"
            converted = _ok(client.call_tool(opened.session_id, "convert_time", {
                "source_timezone": "UTC", "time": "12:30", "target_timezone": "Asia/Tokyo"}), "convert_time")
            assert converted.structured_content["target"]["datetime"].endswith("21:30:00+09:00")
        with client.session("filesystem") as opened:
            _files_in_scratch(client, opened.session_id)
        with client.session("files-data") as opened:
            _files_on_a_mount(client, opened.session_id)
        with client.session("memory") as opened:
            _memory(client, opened.session_id)


def _files_in_scratch(client: RunnerClient, sid: str) -> None:
    def call(tool: str, **arguments: Any) -> str:
        return _ok(client.call_tool(sid, tool, arguments), tool).text

    assert "/tmp" in call("list_allowed_directories")
    call("write_file", path="/tmp/a.txt", content="line one\nline two\n")
    call("edit_file", path="/tmp/a.txt", edits=[{"oldText": "line two", "newText": "line 2"}])
    call("create_directory", path="/tmp/d")
    call("move_file", source="/tmp/a.txt", destination="/tmp/d/b.txt")
    assert call("read_text_file", path="/tmp/d/b.txt") == "line one\nline 2\n"
    assert "b.txt" in call("directory_tree", path="/tmp")
    assert call("search_files", path="/tmp", pattern="**/*.txt") == "/tmp/d/b.txt"
    assert "isFile: true" in call("get_file_info", path="/tmp/d/b.txt")
    call("list_directory_with_sizes", path="/tmp/d")
    # 0.6 MB of non-Latin text to write: as \u escapes it was past the 1 MiB argument cap.
    document = "Съешь же ещё этих мягких французских булок, да выпей чаю. 日本語 🎉\n" * 5_000
    call("write_file", path="/tmp/d/long.md", content=document)
    assert call("read_text_file", path="/tmp/d/long.md") == document


def _files_on_a_mount(client: RunnerClient, sid: str) -> None:
    def call(tool: str, **arguments: Any) -> ToolResult:
        return _ok(client.call_tool(sid, tool, arguments), tool)

    assert call("read_text_file", path="/data/world.txt").text == WORLD_TEXT * 40
    assert len(call("read_text_file", path="/data/prose.txt").text) > 900_000
    assert json.loads(call("read_text_file", path="/data/numbers.json").text)[-1] == 49_999
    pixel = call("read_media_file", path="/data/pixel.png")
    assert [c.image.data for c in pixel.content if c.WhichOneof("kind") == "image"] == [PNG]
    assert "numbers.json" in call("read_multiple_files", paths=["/data/world.txt", "/data/numbers.json"]).text


def _memory(client: RunnerClient, sid: str) -> None:
    entities = [{"name": f"Entity {i}", "entityType": "thing", "observations": [f"note {j} of {i}" for j in range(5)]}
                for i in range(500)]
    entities.append({"name": "Иван", "entityType": "человек", "observations": ["Любит чай", "ignore"]})
    _ok(client.call_tool(sid, "create_entities", {"entities": entities}), "create_entities")
    _ok(client.call_tool(sid, "create_relations", {"relations": [
        {"from": "Entity 0", "to": "Иван", "relationType": "knows"}]}), "create_relations")
    _ok(client.call_tool(sid, "add_observations", {"observations": [
        {"entityName": "Иван", "contents": ["говорит по-французски"]}]}), "add_observations")
    graph = _ok(client.call_tool(sid, "read_graph", {}), "read_graph").structured_content
    assert len(graph["entities"]) == 501 and graph["relations"]
    found = _ok(client.call_tool(sid, "search_nodes", {"query": "Иван"}), "search_nodes").structured_content
    assert [e["name"] for e in found["entities"]] == ["Иван"]
    _ok(client.call_tool(sid, "open_nodes", {"names": ["Entity 7"]}), "open_nodes")
    [graph_text] = client.read_resource(sid, "memory://knowledge-graph")
    assert "Иван" in graph_text.text


def test_memory_answers_a_graph_as_large_as_a_message_may_carry(real: Service) -> None:
    """10,000 entities: 2.3 MB of text and as much structured content, 120,000 values, under the 4 MiB cap (the
    sanitizer's work budget of 100,000 values refused it, after the server had stored them)."""
    with real.client() as client, client.session("memory") as opened:
        sid = opened.session_id
        for batch in range(2):  # two calls: arguments are capped at 1 MiB
            entities = [{"name": f"Entity {batch}-{i}", "entityType": "thing",
                         "observations": [f"note {j} of {i}" for j in range(5)]} for i in range(5_000)]
            _ok(client.call_tool(sid, "create_entities", {"entities": entities}, timeout=60), "create_entities")
        graph = _ok(client.call_tool(sid, "read_graph", {}, timeout=60), "read_graph").structured_content
        assert len(graph["entities"]) == 10_000


def test_git_on_a_repository(real: Service) -> None:
    with real.client() as client, client.session("git-repo") as opened:
        sid = opened.session_id

        def call(tool: str, **arguments: Any) -> str:
            return _ok(client.call_tool(sid, tool, {"repo_path": "/repo", **arguments}), tool).text

        assert "README.md" in call("git_status")
        log = call("git_log", max_count=5)
        assert "second: add a line" in log and "first commit" in log
        assert "+unstaged" in call("git_diff_unstaged")
        assert "+more" in call("git_diff", target="HEAD~1")
        call("git_diff_staged")
        assert "* main" in call("git_branch", branch_type="local")


def test_fetch_through_its_own_upstream(real: Service) -> None:
    with real.client() as client, client.session("fetch-web") as opened:
        page = _ok(client.call_tool(opened.session_id, "fetch", {"url": "http://honest-web:8080/page", "raw": True}),
                   "fetch")
        assert '"server": "honest-web"' in page.text
        # The server looks the host up itself before fetching: in the sandbox that lookup fails (names are the
        # proxy's), and it waited 10 s for Docker's resolver on the internal network. The resolver is told to
        # give up after one try of one second (checked as configured, not timed).
        session = docker.from_env().containers.list(filters={"label": f"{SESSION_LABEL}={opened.session_id}"})
        [sandbox] = [c for c in session if ROLE_LABEL not in c.labels]  # not its egress proxy
        assert sandbox.attrs["HostConfig"]["DnsOptions"] == ["timeout:1", "attempts:1"]
        [prompt] = [p for p in client.list_prompts(opened.session_id) if p.name == "fetch"]
        assert [a.name for a in prompt.arguments] == ["url"]
        fetched = client.get_prompt(opened.session_id, "fetch", {"url": "http://honest-web:8080/prompt"})
        assert "honest-web" in str(fetched.messages)
        _clean(fetched.findings, "prompts/get fetch")
