"""The Kubernetes client behind one small typed adapter: its configuration, its APIs, its errors.

The official client is blocking: the backend calls it from its own thread pool. Everything it or the attach
websocket raises (``ApiException``, urllib3 and websockets errors, ``OSError``) becomes a runner error in one
place, ``map_kube_errors``. The attach websocket (``runner.sandbox.kube_attach``) runs on the event loop, with
the URL, TLS context and credentials taken from the same configuration.
"""

from __future__ import annotations

import contextlib
import json
import re
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import kubernetes.client
import kubernetes.config
import pydantic
import urllib3.exceptions
import urllib3.util
import websockets.exceptions
from kubernetes.client.exceptions import ApiException

from runner.config import KubernetesConfig
from runner.errors import FailedPrecondition, RunnerError, Unavailable
from runner.text import printable

_FORBIDDEN = re.compile(r'cannot ([a-z]+) resource "([a-z0-9./-]+)"')
_STATUS_REASON = re.compile(r"[A-Za-z]{1,40}")
_MESSAGE_CAP = 400
_LOADERS: Any = kubernetes.config  # untyped
RETRIES = urllib3.util.Retry(total=2, connect=2, read=0, status=0, redirect=0, backoff_factor=0.1)
"""A connection refused is tried again; a read is not (a create sent twice would meet its own name)."""


@dataclass(frozen=True)
class KubeApi:
    """One cluster and namespace, its typed API groups, and how to reach it from the event loop."""

    namespace: str
    host: str
    timeout: float
    configuration: Any
    core: Any
    networking: Any
    node: Any
    custom: Any
    apis: Any


def connect(config: KubernetesConfig, pool_size: int) -> KubeApi:
    """The client for ``config``: from its kubeconfig (and context), or the pod's own service account."""
    cfg = kubernetes.client.Configuration()
    try:
        if config.kubeconfig is None:
            _LOADERS.load_incluster_config(client_configuration=cfg)
        else:
            _LOADERS.load_kube_config(
                config_file=str(config.kubeconfig), context=config.context, client_configuration=cfg,
                persist_config=False,
            )
    except (kubernetes.config.ConfigException, OSError, ValueError) as exc:
        where = f"kubeconfig {config.kubeconfig}" if config.kubeconfig else "the in-cluster service account"
        raise FailedPrecondition(f"cannot load the Kubernetes configuration from {where}: {exc}") from exc
    cfg.retries = RETRIES
    cfg.connection_pool_maxsize = pool_size
    client = kubernetes.client.ApiClient(cfg)
    return KubeApi(
        namespace=config.namespace,
        host=cfg.host,
        timeout=config.api_timeout_s,
        configuration=cfg,
        core=kubernetes.client.CoreV1Api(client),
        networking=kubernetes.client.NetworkingV1Api(client),
        node=kubernetes.client.NodeV1Api(client),
        custom=kubernetes.client.CustomObjectsApi(client),
        apis=kubernetes.client.ApisApi(client),
    )


def attach_url(api: KubeApi, pod: str, container: str) -> str:
    query = urlencode({"container": container, "stdin": "true", "stdout": "true", "stderr": "true", "tty": "false"})
    base = re.sub(r"^http", "ws", api.host.rstrip("/"))
    return f"{base}/api/v1/namespaces/{api.namespace}/pods/{pod}/attach?{query}"


def auth_headers(api: KubeApi) -> dict[str, str]:
    """The credentials the client would send (a bearer token, refreshed by its hook), for the websocket."""
    settings: dict[str, dict[str, Any]] = api.configuration.auth_settings()
    return {s["key"]: s["value"] for s in settings.values() if s.get("in") == "header" and s.get("value")}


def tls_context(api: KubeApi) -> ssl.SSLContext | None:
    """The client's TLS settings (CA, client certificate, verification) as an ``ssl`` context; None for http."""
    cfg = api.configuration
    if not api.host.startswith("https"):
        return None
    if cfg.verify_ssl:
        context = ssl.create_default_context(cafile=cfg.ssl_ca_cert)
        context.check_hostname = cfg.assert_hostname is not False
    else:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if cfg.cert_file:
        context.load_cert_chain(cfg.cert_file, cfg.key_file)
    return context


def _said(body: object, fallback: object) -> str:
    text = bytes(body).decode(errors="replace") if isinstance(body, bytes | bytearray) else str(body or "")
    with contextlib.suppress(ValueError, AttributeError):
        text = str(json.loads(text).get("message") or text)
    return printable(" ".join((text or str(fallback or "")).split()), _MESSAGE_CAP)


def without_body(exc: ApiException) -> ApiException:
    """``exc`` keeping its status and the Status's reason word only, for a request that carried a Secret's
    values: a decoding or admission error quotes the request back (the decoder's "bigger context" is a cut of
    it, which no redaction of whole values would catch). A denial's verb and resource are kept."""
    said: Any = None
    with contextlib.suppress(ValueError, TypeError):
        said = json.loads(exc.body or "")
    said = said if isinstance(said, dict) else {}
    reason = str(said.get("reason") or "")
    denied = _FORBIDDEN.search(str(said.get("message") or ""))
    message = f"{reason if _STATUS_REASON.fullmatch(reason) else 'refused'} (the answer is not quoted: it may " \
              "echo the Secret's values)"
    if denied:
        message = f'cannot {denied.group(1)} resource "{denied.group(2)}"; {message}'
    stripped = ApiException(status=exc.status, reason=exc.reason)
    stripped.body = json.dumps({"message": message})
    return stripped


def error_for_status(action: str, status: int, message: str, api: KubeApi) -> RunnerError:
    """What an API server's answer ``status`` means for the caller (see ``map_kube_errors``)."""
    if status == 401:
        return Unavailable(f"{action}: the Kubernetes API server at {api.host} refused the credentials: {message}")
    if status == 403:
        denied = _FORBIDDEN.search(message)
        need = f" (verb {denied.group(1)!r} on {denied.group(2)!r})" if denied else ""
        return FailedPrecondition(
            f"{action}: the cluster's RBAC forbids it{need}: {message}; grant the service's Role that verb in "
            f"namespace {api.namespace} (see deploy/kubernetes/)"
        )
    if status == 404 and "namespaces" in message:
        return FailedPrecondition(
            f"{action}: the namespace {api.namespace!r} does not exist ({message}); create it "
            f"(`kubectl create namespace {api.namespace}`) or set kubernetes.namespace"
        )
    if status == 409:
        return FailedPrecondition(
            f"{action}: the name is taken ({message}): an object of an earlier run with this instance and session "
            "id is still there; the start-up sweep removes those"
        )
    if status in (400, 404, 422):
        return FailedPrecondition(f"{action}: the cluster refused it ({status}): {message}")
    return Unavailable(f"{action}: the Kubernetes API server at {api.host} answered {status}: {message}")


@contextlib.contextmanager
def map_kube_errors(action: str, api: KubeApi | None) -> Iterator[None]:
    """The one place client, websocket and transport errors become runner errors."""
    try:
        yield
    except RunnerError:
        raise
    except ApiException as exc:
        if not exc.status or api is None:
            raise Unavailable(f"{action}: Kubernetes API server unreachable: {exc.reason}") from exc
        raise error_for_status(action, int(exc.status), _said(exc.body, exc.reason), api) from exc
    except pydantic.ValidationError as exc:
        # The client checks a request's types before it sends it; its message quotes the values (maybe secret).
        fields = "; ".join(".".join(str(part) for part in error["loc"]) for error in exc.errors()[:5])
        raise FailedPrecondition(f"{action}: the Kubernetes client refused the request ({printable(fields, 200)})"
                                 ) from None
    except websockets.exceptions.InvalidStatus as exc:
        if api is None:
            raise Unavailable(f"{action}: {exc}") from exc
        raise error_for_status(action, exc.response.status_code, _said(exc.response.body, exc), api) from exc
    except (urllib3.exceptions.HTTPError, websockets.exceptions.WebSocketException, OSError, TimeoutError) as exc:
        where = f" at {api.host}" if api is not None else ""
        raise Unavailable(f"{action}: Kubernetes API server unreachable{where}: {exc or type(exc).__name__}") from exc
