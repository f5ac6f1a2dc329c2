"""A small stdio MCP server on the real SDK (mcp 2.3 low-level ``Server.run``, which serves both eras): the agent's
2026-07-28 envelope, its discover and its relays are checked against what the SDK itself accepts and sends.

Tools:
  echo          {"text"} → the text
  ask_name      asks the client for a name: by an ``elicitation/create`` request in the handshake era, by an
                InputRequiredResult (requestState "asked-once") in the 2026-07-28 era; answers "hello <name>"
                (or "declined")
  chatter       sends a log message (in the handshake era; in 2026-07-28 only when the request opted in) and
                tools/list_changed, then answers "done"
  capabilities  answers with the client capabilities the server sees for this request (JSON text)
Plus one resource template, completion, subscribe/unsubscribe (a subscribe sends resources/updated).
Run with the SDK installed: ``python dual_era_server.py``.
"""

from __future__ import annotations

import json
from typing import Any

import anyio
import mcp_types as types
from mcp.server import Server, ServerRequestContext
from mcp.server.stdio import stdio_server

MODERN = "2026-07-28"
NAME_SCHEMA: dict[str, Any] = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
TOOLS = [
    types.Tool(name="echo", input_schema={"type": "object", "properties": {"text": {"type": "string"}}}),
    types.Tool(name="ask_name", input_schema={"type": "object"}),
    types.Tool(name="chatter", input_schema={"type": "object"}),
    types.Tool(name="capabilities", input_schema={"type": "object"}),
]


def text(value: str) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(text=value)])


def greeting(answer: object) -> str:
    if isinstance(answer, types.ElicitResult) and answer.action == "accept" and answer.content:
        return f"hello {answer.content.get('name')}"
    return "declined"


async def list_tools(
    ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
) -> types.ListToolsResult:
    return types.ListToolsResult(tools=TOOLS)


async def ask_name(
    ctx: ServerRequestContext[Any], params: types.CallToolRequestParams
) -> types.CallToolResult | types.InputRequiredResult:
    if ctx.protocol_version != MODERN:
        answer = await ctx.session.elicit_form("What is your name?", NAME_SCHEMA, related_request_id=ctx.request_id)
        return text(greeting(answer))
    responses = params.input_responses or {}
    if "name" in responses and params.request_state == "asked-once":
        return text(greeting(responses["name"]))
    ask = types.ElicitRequest(
        params=types.ElicitRequestFormParams(message="What is your name?", requested_schema=NAME_SCHEMA)
    )
    return types.InputRequiredResult(input_requests={"name": ask}, request_state="asked-once")


async def call_tool(
    ctx: ServerRequestContext[Any], params: types.CallToolRequestParams
) -> types.CallToolResult | types.InputRequiredResult:
    arguments = params.arguments or {}
    if params.name == "echo":
        return text(str(arguments.get("text", "")))
    if params.name == "ask_name":
        return await ask_name(ctx, params)
    if params.name == "chatter":
        await ctx.session.send_log_message("info", "chattering", logger="dual", related_request_id=ctx.request_id)
        await ctx.session.send_tool_list_changed()
        return text("done")
    if params.name == "capabilities":
        seen = ctx.session.client_capabilities
        return text(
            json.dumps(None if seen is None else seen.model_dump(mode="json", by_alias=True, exclude_none=True))
        )
    raise ValueError(f"unknown tool {params.name}")


async def list_templates(
    ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
) -> types.ListResourceTemplatesResult:
    template = types.ResourceTemplate(name="note", uri_template="note://{id}")
    return types.ListResourceTemplatesResult(resource_templates=[template])


async def complete(ctx: ServerRequestContext[Any], params: types.CompleteRequestParams) -> types.CompleteResult:
    prefix = params.argument.value
    values = [v for v in ("alpha", "beta", "alpine") if v.startswith(prefix)]
    return types.CompleteResult(completion=types.Completion(values=values, total=len(values), has_more=False))


async def subscribe(ctx: ServerRequestContext[Any], params: types.SubscribeRequestParams) -> types.EmptyResult:
    await ctx.session.send_resource_updated(params.uri)
    return types.EmptyResult()


async def unsubscribe(ctx: ServerRequestContext[Any], params: types.UnsubscribeRequestParams) -> types.EmptyResult:
    return types.EmptyResult()


SERVER: Server[Any] = Server(
    "dual-era",
    version="1.0.0",
    instructions="A test server for both eras.",
    on_list_tools=list_tools,
    on_call_tool=call_tool,
    on_list_resource_templates=list_templates,
    on_completion=complete,
    on_subscribe_resource=subscribe,
    on_unsubscribe_resource=unsubscribe,
)


async def main() -> None:
    async with stdio_server() as (read, write):
        await SERVER.run(read, write, SERVER.create_initialization_options())


if __name__ == "__main__":
    anyio.run(main)
