"""ListProfiles and GetSessionLogs: what a caller may learn that no server is asked for.

Conversion only, like the rest of the servicer (``RunnerServicer`` inherits these); the answers come from the
SessionManager's ``catalog()`` (``runner.sessions.catalog``).
"""

from __future__ import annotations

from typing import Any, Protocol

from runner.api import convert, inputs
from runner.api._proto.mcp_runner.v1 import runner_pb2 as pb
from runner.api.auth import Authenticator
from runner.api.statuses import Context, translate_errors
from runner.sessions.catalog import Catalog


class CatalogService(Protocol):
    """What these RPCs need from the SessionManager."""

    def catalog(self) -> Catalog: ...


class CatalogRpcs:
    _manager: CatalogService
    _auth: Authenticator

    async def ListProfiles(self, request: Any, context: Context) -> Any:
        async with translate_errors(context, "ListProfiles"):
            caller = self._auth.identify(context)
            only = inputs.name(request.name, "name") if request.name else ""
            profiles = self._manager.catalog().profiles(caller, only)
            return pb.ListProfilesResponse(profiles=[convert.profile_to_proto(p) for p in profiles])

    async def GetSessionLogs(self, request: Any, context: Context) -> Any:
        async with translate_errors(context, "GetSessionLogs"):
            caller = self._auth.identify(context)
            logs = await self._manager.catalog().logs(convert.require_session_id(request.session_id), caller)
            return convert.logs_to_proto(logs)
