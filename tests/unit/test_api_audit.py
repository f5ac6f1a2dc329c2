"""The audit RPCs end to end: a real grpc.aio server over a fake ``AuditAccess``, driven by the async client."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from types import MappingProxyType
from typing import Any

import grpc
import pytest

from runner import errors
from runner.api import convert, start_server
from runner.api._proto.mcp_runner.v1 import runner_pb2 as pb
from runner.api._proto.mcp_runner.v1 import runner_pb2_grpc
from runner.api.auth import Authenticator, hash_token, new_token
from runner.api.servicer import AUDIT_DISABLED, EXPORT_CHUNK_BYTES, AuditAccess
from runner.audit.records import (
    GENESIS,
    KINDS,
    AuditEvent,
    AuditQuery,
    AuditRecord,
    ReplayVerdict,
    Verification,
    canonical_json,
    chain_hash,
)
from runner.client import AsyncRunnerClient
from runner.config import AuthConfig
from tests.unit.test_api import FakeManager, _typed, anonymous

T0 = 1_700_000_000.123456


def chain(events: Iterable[AuditEvent]) -> list[AuditRecord]:
    """Records as the store would chain them."""
    records: list[AuditRecord] = []
    prev = GENESIS
    for seq, event in enumerate(events, 1):
        digest = chain_hash(prev, AuditRecord.body_of(seq, event, prev))
        records.append(AuditRecord(
            seq=seq, id=event.id, at=event.at, kind=event.kind, session_id=event.session_id, caller=event.caller,
            data=event.data, prev=prev, hash=digest,
        ))  # fmt: skip
        prev = digest
    return records


def sample_records() -> list[AuditRecord]:
    call = {"name": "get_current_time", "arguments": {"timezone": "UTC"}}
    return chain([
        AuditEvent("session.open", "s1", "alice", {"profile": "time", "image": "mcp/time:1", "outcome": "ok"},
                   id="aud_0000000000000001", at=T0),
        AuditEvent("request", "s1", "alice", {"method": "tools/call", "params": call, "outcome": "ok",
                   "result": {"content": [{"type": "text", "text": "12:00"}]}, "findings": [], "duration_ms": 3},
                   id="aud_0000000000000002", at=T0 + 1),
        AuditEvent("policy", "s2", "bob", {"action": "call", "verdict": "deny", "rule": "no-deletes",
                   "tool": "delete"}, id="aud_0000000000000003", at=T0 + 2),
        AuditEvent("request", "s2", "bob", {"method": "tools/call", "params": {"name": "delete"}, "outcome": "error",
                   "error": {"status": "PERMISSION_DENIED", "message": "rule no-deletes"}, "findings": []},
                   id="aud_0000000000000004", at=T0 + 3),
        AuditEvent("session.close", "s1", "alice", {"state": "closed", "reason": "closed by caller", "usage": {}},
                   id="aud_0000000000000005", at=T0 + 4),
    ])  # fmt: skip


INTACT = Verification(intact=True, checked=5, first_seq=1, head_seq=5, head_hash="ab" * 32)
BROKEN = Verification(
    intact=False, checked=2, first_seq=1, head_seq=2, head_hash="cd" * 32, broken_seq=3,
    broken_id="aud_0000000000000003", problem="its hash does not match its contents",
)  # fmt: skip

DIFF = ({"op": "replace", "path": "/content/0/text", "old": "12:00", "new": "12:01"},)
VERDICTS = (
    ReplayVerdict(1, "get_current_time", "same", "aud_a", "s9", replay_audit_id="aud_b"),
    ReplayVerdict(2, "get_current_time", "different", "aud_c", "s9", replay_audit_id="aud_d", diff=DIFF),
    ReplayVerdict(3, "delete", "refused", "aud_e", "s9", reason="denied by rule no-deletes"),
)


class FakeAudit:
    """Duck-typed AuditAccess: filters its records like the store would, and remembers what it was asked."""

    def __init__(self) -> None:
        self.records = sample_records()
        self.lines = [canonical_json(r.to_json()) + "\n" for r in self.records]
        self.verification = INTACT
        self.verdicts = VERDICTS
        self.error: errors.RunnerError | Exception | None = None
        self.fail_after: int | None = None
        """Raise ``error`` after this many streamed items instead of before the first."""
        self.page_size = 0
        """Answer at most this many records per query (0: no cap), as a service that caps answers would."""
        self.queries: list[tuple[AuditQuery, str]] = []
        self.exports: list[tuple[str, str]] = []
        self.verifies: list[str] = []
        self.replays: list[tuple[str, str, float | None]] = []

    async def _stream(self, items: Iterable[Any]) -> AsyncIterator[Any]:
        if self.error is not None and self.fail_after is None:
            raise self.error
        for n, item in enumerate(items):
            if self.error is not None and n == self.fail_after:
                raise self.error
            yield item
            await asyncio.sleep(0)

    def _matches(self, record: AuditRecord, query: AuditQuery) -> bool:
        return (
            record.seq > query.after_seq
            and query.record_id in ("", record.id)
            and query.session_id in ("", record.session_id)
            and query.caller in ("", record.caller)
            and (query.since is None or record.at >= query.since)
            and (query.until is None or record.at < query.until)
            and (not query.kinds or record.kind in query.kinds)
        )

    def query(self, query: AuditQuery, *, caller: str) -> AsyncIterator[AuditRecord]:
        self.queries.append((query, caller))
        found = [r for r in self.records if self._matches(r, query)]
        for cap in (query.limit, self.page_size):
            if cap:
                found = found[:cap]
        return self._stream(found)

    def export_session(self, session_id: str, *, caller: str) -> AsyncIterator[str]:
        self.exports.append((session_id, caller))
        return self._stream(self.lines)

    async def verify(self, *, caller: str) -> Verification:
        self.verifies.append(caller)
        if self.error is not None:
            raise self.error
        return self.verification

    def replay(self, session_id: str, *, caller: str, timeout: float | None) -> AsyncIterator[ReplayVerdict]:
        self.replays.append((session_id, caller, timeout))
        return self._stream(self.verdicts)


def _access(audit: FakeAudit) -> AuditAccess:
    return audit  # mypy: the fake satisfies the Protocol the servicer asks for


@asynccontextmanager
async def serve_audit(audit: FakeAudit | None, authenticator: Authenticator | None = None) -> AsyncIterator[str]:
    """A real server with ``audit`` (None: the audit log disabled) for the block; yields its address."""
    running = await start_server(
        _typed(FakeManager()), "127.0.0.1:0", authenticator=authenticator or anonymous(), grace=0,
        audit=_access(audit) if audit is not None else None,
    )  # fmt: skip
    try:
        yield f"127.0.0.1:{running.port}"
    finally:
        await running.stop(0)


@pytest.fixture
def audit() -> FakeAudit:
    return FakeAudit()


@pytest.fixture
async def client(audit: FakeAudit) -> AsyncIterator[AsyncRunnerClient]:
    async with serve_audit(audit) as address, AsyncRunnerClient(address) as client:
        yield client


async def collect(items: AsyncIterator[Any]) -> list[Any]:
    return [item async for item in items]


def _unix(timestamp: Any) -> float:
    return float(timestamp.seconds + timestamp.nanos / 1e9)


# -------------------------------------------------------------------- QueryAudit


async def test_query_streams_every_record_with_its_chain(client: AsyncRunnerClient, audit: FakeAudit) -> None:
    got = await collect(client.query_audit())
    assert [r.seq for r in got] == [1, 2, 3, 4, 5]
    for message, record in zip(got, audit.records, strict=True):
        assert (message.id, message.kind, message.session_id, message.caller) == (
            record.id, record.kind, record.session_id, record.caller,
        )  # fmt: skip
        assert _unix(message.at) == pytest.approx(record.at, abs=1e-6)
        assert message.data_json == canonical_json(record.data)
        assert json.loads(message.data_json) == record.data
        assert (message.prev_hash, message.hash) == (record.prev, record.hash)
    assert got[0].prev_hash == GENESIS and got[1].prev_hash == got[0].hash
    assert audit.queries == [(AuditQuery(), "anonymous")]


async def test_query_filters_arrive_as_the_audit_query(client: AsyncRunnerClient, audit: FakeAudit) -> None:
    await collect(client.query_audit(
        record_id="aud_x", session_id="s1", caller="bob", since=1_700_000_000.25, until=1_700_000_100.5,
        kinds=["request", "policy", "request"], after_seq=3, limit=10,
    ))  # fmt: skip
    expected = AuditQuery(
        record_id="aud_x", session_id="s1", caller="bob", since=1_700_000_000.25, until=1_700_000_100.5,
        kinds=("request", "policy"), after_seq=3, limit=10,
    )  # fmt: skip
    assert audit.queries == [(expected, "anonymous")]


async def test_query_filters_select_records(client: AsyncRunnerClient) -> None:
    got = await collect(client.query_audit(session_id="s2", kinds=["request"]))
    assert [r.id for r in got] == ["aud_0000000000000004"]
    got = await collect(client.query_audit(since=T0 + 1, until=T0 + 3))
    assert [r.seq for r in got] == [2, 3]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"kinds": ["request", "nope"]}, "unknown audit record kind 'nope'; known: " + ", ".join(KINDS)),
        ({"since": T0, "until": T0}, "since must be before until"),
        ({"since": T0 + 1, "until": T0}, "since must be before until"),
        ({"after_seq": -1}, "after_seq must not be negative"),
        ({"limit": -1}, "limit must not be negative"),
    ],
)
async def test_query_refuses_bad_filters(
    client: AsyncRunnerClient, audit: FakeAudit, arguments: dict[str, Any], message: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await collect(client.query_audit(**arguments))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in (caught.value.details() or "")
    assert audit.queries == []


async def test_error_in_the_middle_of_a_stream_ends_it_with_the_status(
    client: AsyncRunnerClient, audit: FakeAudit
) -> None:
    audit.error, audit.fail_after = errors.AuditError("the audit log could not be read"), 2
    got: list[Any] = []
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for record in client.query_audit():
            got.append(record)
    assert [r.seq for r in got] == [1, 2]
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert caught.value.details() == "the audit log could not be read"


# ----------------------------------------------------------------- ExportSession


async def test_export_reassembles_to_exactly_the_lines(client: AsyncRunnerClient, audit: FakeAudit) -> None:
    chunks = await collect(client.export_session("s1"))
    assert "".join(chunks) == "".join(audit.lines)
    assert audit.exports == [("s1", "anonymous")]


async def test_export_batches_whole_lines_up_to_the_chunk_size(client: AsyncRunnerClient, audit: FakeAudit) -> None:
    line = json.dumps({"text": "é" * 1000}, ensure_ascii=False) + "\n"  # 2 bytes a character: sizes count bytes
    huge = json.dumps({"text": "x" * (EXPORT_CHUNK_BYTES + 10)}) + "\n"
    audit.lines = [line] * 100 + [huge] + [line] * 3
    chunks = await collect(client.export_session("s1"))
    assert "".join(chunks) == "".join(audit.lines)
    assert 3 <= len(chunks) < 10
    assert huge in chunks  # a line bigger than a chunk travels alone, whole
    for chunk in chunks:
        assert chunk.endswith("\n")
        assert chunk == huge or len(chunk.encode()) <= EXPORT_CHUNK_BYTES


async def test_export_ends_every_line(client: AsyncRunnerClient, audit: FakeAudit) -> None:
    audit.lines = ['{"seq":1}', '{"seq":2}\n']
    assert "".join(await collect(client.export_session("s1"))) == '{"seq":1}\n{"seq":2}\n'


async def test_export_of_nothing_sends_nothing(client: AsyncRunnerClient, audit: FakeAudit) -> None:
    audit.lines = []
    assert await collect(client.export_session("s1")) == []


# ------------------------------------------------------------------- VerifyAudit


@pytest.mark.parametrize("verification", [INTACT, BROKEN])
async def test_verify_round_trips(client: AsyncRunnerClient, audit: FakeAudit, verification: Verification) -> None:
    audit.verification = verification
    reply = await client.verify_audit()
    assert reply == convert.verification_to_proto(verification)
    assert (reply.intact, reply.checked, reply.head_hash, reply.broken_seq, reply.problem) == (
        verification.intact, verification.checked, verification.head_hash, verification.broken_seq,
        verification.problem,
    )  # fmt: skip
    assert audit.verifies == ["anonymous"]


# ----------------------------------------------------------------- ReplaySession


async def test_replay_streams_verdicts(client: AsyncRunnerClient, audit: FakeAudit) -> None:
    got = await collect(client.replay_session("s1"))
    assert [(v.index, v.tool, v.verdict) for v in got] == [
        (1, "get_current_time", "same"), (2, "get_current_time", "different"), (3, "delete", "refused"),
    ]  # fmt: skip
    same, different, refused = got
    assert (same.diff_json, same.original_audit_id, same.replay_audit_id, same.replay_session_id) == (
        "", "aud_a", "aud_b", "s9",
    )  # fmt: skip
    assert json.loads(different.diff_json) == list(DIFF)
    assert (refused.reason, refused.replay_audit_id) == ("denied by rule no-deletes", "")
    assert audit.replays == [("s1", "anonymous", None)]


async def test_replay_timeout_is_the_shorter_of_timeout_ms_and_the_deadline(
    client: AsyncRunnerClient, audit: FakeAudit
) -> None:
    await collect(client.replay_session("s1", timeout_ms=1500))
    await collect(client.replay_session("s1", timeout_ms=60_000, timeout=2.0))
    (_, _, from_ms), (_, _, from_deadline) = audit.replays
    assert from_ms == pytest.approx(1.5)
    assert from_deadline is not None and 1.5 < from_deadline <= 2.0


# ----------------------------------------------------------- shared refusals


def _calls(client: AsyncRunnerClient, session_id: str = "s1") -> dict[str, Any]:
    """Each audit RPC as a coroutine that runs it to the end."""
    return {
        "QueryAudit": collect(client.query_audit(session_id=session_id)),
        "ExportSession": collect(client.export_session(session_id)),
        "VerifyAudit": client.verify_audit(),
        "ReplaySession": collect(client.replay_session(session_id)),
    }


RPCS = ("QueryAudit", "ExportSession", "VerifyAudit", "ReplaySession")


async def _status_of(client: AsyncRunnerClient, rpc: str, session_id: str = "s1") -> grpc.aio.AioRpcError:
    calls = _calls(client, session_id)
    for name, pending in calls.items():
        if name != rpc:
            pending.close()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await calls[rpc]
    return caught.value


@pytest.mark.parametrize("rpc", ["ExportSession", "ReplaySession"])
async def test_empty_session_id_is_invalid(client: AsyncRunnerClient, audit: FakeAudit, rpc: str) -> None:
    error = await _status_of(client, rpc, session_id="")
    assert (error.code(), error.details()) == (grpc.StatusCode.INVALID_ARGUMENT, "session_id is required")
    assert audit.exports == audit.replays == []


@pytest.mark.parametrize("rpc", RPCS)
async def test_disabled_audit_log_is_a_failed_precondition(rpc: str) -> None:
    async with serve_audit(None) as address, AsyncRunnerClient(address) as client:
        error = await _status_of(client, rpc)
    assert (error.code(), error.details()) == (grpc.StatusCode.FAILED_PRECONDITION, AUDIT_DISABLED)


@pytest.mark.parametrize("rpc", RPCS)
async def test_domain_errors_become_their_status(client: AsyncRunnerClient, audit: FakeAudit, rpc: str) -> None:
    audit.error = errors.PermissionDenied("alice may read only her own records (role auditor needed)")
    error = await _status_of(client, rpc)
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error.details() == "alice may read only her own records (role auditor needed)"


@pytest.mark.parametrize("rpc", RPCS)
async def test_unexpected_errors_are_internal_without_details(
    client: AsyncRunnerClient, audit: FakeAudit, rpc: str
) -> None:
    audit.error = RuntimeError("secret internal detail")
    error = await _status_of(client, rpc)
    assert error.code() == grpc.StatusCode.INTERNAL
    assert "secret" not in (error.details() or "")


async def test_callers_are_identified_before_anything_else(audit: FakeAudit) -> None:
    token = new_token()
    authenticator = Authenticator(AuthConfig(tokens=True), {hash_token(token): "carol"}.get)
    async with serve_audit(audit, authenticator) as address:
        async with AsyncRunnerClient(address) as client:
            for rpc in RPCS:
                assert (await _status_of(client, rpc)).code() == grpc.StatusCode.UNAUTHENTICATED
        async with AsyncRunnerClient(address, token=token) as client:
            for pending in _calls(client).values():
                await pending
    assert [caller for _, caller in audit.queries] == ["carol"]
    assert audit.exports == [("s1", "carol")] and audit.verifies == ["carol"]
    assert audit.replays == [("s1", "carol", None)]


async def test_unset_timestamps_mean_no_bound(audit: FakeAudit) -> None:
    async with serve_audit(audit) as address, grpc.aio.insecure_channel(address) as channel:
        stub = runner_pb2_grpc.RunnerStub(channel)
        request = pb.QueryAuditRequest(session_id="s1")
        request.until.seconds = 0  # touching a field sets it: the epoch is a bound, not "unset"
        assert [r async for r in stub.QueryAudit(request)] == []
        assert [r.seq async for r in stub.QueryAudit(pb.QueryAuditRequest(session_id="s1"))] == [1, 2, 5]
    (bounded, _), (unbounded, _) = audit.queries
    assert bounded.until == 0.0 and bounded.since is None
    assert unbounded.since is None and unbounded.until is None


# ---------------------------------------------------------------- conversion


def test_record_data_and_diff_become_canonical_json_whatever_their_mapping_type() -> None:
    data = MappingProxyType({"b": (1, 2), "a": MappingProxyType({"é": None})})
    record = AuditRecord(1, "aud_1", T0, "request", "s1", "alice", data, prev=GENESIS, hash="00" * 32)
    assert convert.audit_record_to_proto(record).data_json == '{"a":{"é":null},"b":[1,2]}'
    entry: Mapping[str, Any] = MappingProxyType({"op": "add", "path": "/x", "new": (True,)})
    verdict = ReplayVerdict(1, "t", "different", "aud_1", "s2", diff=(entry,))
    assert convert.verdict_to_proto(verdict).diff_json == '[{"new":[true],"op":"add","path":"/x"}]'


def test_record_time_survives_to_the_microsecond() -> None:
    record = chain([AuditEvent("request", "s1", "alice", {}, id="aud_1", at=T0)])[0]
    message = convert.audit_record_to_proto(record)
    assert (message.at.seconds, round(message.at.nanos / 1000)) == (1_700_000_000, 123456)
