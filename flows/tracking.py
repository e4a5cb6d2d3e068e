"""The MLflow tracking server as the pipeline sees it: where artifacts go, a cheap check that it answers, and
bounded HTTP retries, so that a server that is down or misconfigured costs seconds and one clear line.

MLflow's own client retries a failed HTTP request 7 times with exponential backoff and a 120 s timeout (minutes
before an error). `prepare_tracking` lowers those defaults for this process (`HTTP_DEFAULTS`; variables already
set in the environment win) and, for an http(s) tracking URI, asks the server `GET /health` and one read-only REST
call first (`check_tracking_server`): a refused connection, a timeout, a proxy error or a refused login becomes
one `TrackingUnavailable` line naming the URI, what failed and what to check. It is transient (`transient =
True`), so the flow's retries of the register stage apply.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import socket
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from ssl_components.config import is_uri
from ssl_components.errors import PipelineError

# MLflow HTTP client settings for this process unless already set: 2 retries (about 3 s of backoff) and 30 s
# without a byte from the server before a request fails, instead of 7 retries (about 4 minutes) and 120 s.
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}
CHECK_TIMEOUT = 5.0  # seconds per probe request
CHECK_ATTEMPTS = 3  # probes before giving up on a refused connection, a timeout or a 5xx
CHECK_FRESH = 30.0  # a server that answered is not asked again for this many seconds (one register stage asks ~5 times)
SERVER_HINT = (
    "check that `mlflow server` runs there and that register.tracking_uri is right "
    "(on the server's machine: `bash scripts/team-mlflow.sh status`, or `start`)"
)
LOGIN_HINT = "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) for this server"


class TrackingUnavailable(PipelineError):
    """The MLflow tracking server did not answer, or refused us; worth retrying."""

    transient = True


def is_http(uri: str) -> bool:
    return urllib.parse.urlsplit(uri).scheme in ("http", "https")


def artifact_location(root: str | None) -> str | None:
    """register.artifact_root as MLflow's `artifact_location`: a URI unchanged, a local path as an absolute
    file:// URI (relative to the workspace), None (the tracking server's default) unchanged."""
    if root is None or is_uri(root):
        return root
    return Path(root).resolve().as_uri()


def shown(uri: str) -> str:
    """The URI without any user:password@ in it, for messages."""
    parts = urllib.parse.urlsplit(uri)
    if "@" not in parts.netloc:
        return uri
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc.rsplit("@", 1)[1], parts.path, parts.query, parts.fragment))


_answered: dict[str, float] = {}  # uri -> monotonic time of its last good check


def prepare_tracking(uri: str) -> None:
    """Bound MLflow's HTTP retries, then check an http(s) tracking server (no-op for sqlite and other stores)."""
    for key, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)
    check_tracking_server(uri)


def check_tracking_server(uri: str, *, again: bool = False, attempts: int = CHECK_ATTEMPTS, timeout: float = CHECK_TIMEOUT) -> None:
    """Raise TrackingUnavailable (one line) unless the MLflow server at `uri` answers /health and its REST API.

    A server that answered within the last CHECK_FRESH seconds is not asked again unless `again`."""
    if not is_http(uri):
        return
    if not again and time.monotonic() - _answered.get(uri, -CHECK_FRESH) < CHECK_FRESH:
        return
    for attempt in range(attempts):
        problem, hint, retry = _probe(uri.rstrip("/"), timeout)
        if problem is None:
            _answered[uri] = time.monotonic()
            return
        if not retry or attempt == attempts - 1:
            break
        time.sleep(0.5 * (attempt + 1))
    _answered.pop(uri, None)
    tries = f" ({attempts} tries)" if retry and attempts > 1 else ""
    raise TrackingUnavailable(f"MLflow tracking server {shown(uri)} {problem}{tries}; {hint}")


def _request(url: str, timeout: float) -> tuple[int, bytes]:
    """(HTTP status, body) of a GET with the credentials and TLS settings MLflow's client would use."""
    headers = {"Accept": "application/json"}
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if user and password:
        headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    elif os.environ.get("MLFLOW_TRACKING_TOKEN"):
        headers["Authorization"] = f"Bearer {os.environ['MLFLOW_TRACKING_TOKEN']}"
    context = None
    if url.startswith("https://"):
        context = ssl.create_default_context(cafile=os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH") or None)
        if os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() == "true":
            context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        if os.environ.get("MLFLOW_TRACKING_CLIENT_CERT_PATH"):
            context.load_cert_chain(os.environ["MLFLOW_TRACKING_CLIENT_CERT_PATH"])
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout, context=context) as resp:
            return resp.status, resp.read(65536)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(65536) if exc.fp is not None else b""


def _probe(base: str, timeout: float) -> tuple[str | None, str, bool]:
    """(what failed or None, what to check, whether trying again may help) for one look at the server."""
    try:
        status, _ = _request(f"{base}/health", timeout)
        if status in (401, 403):
            return f"refused the login (HTTP {status} on /health)", LOGIN_HINT, False
        if status != 200:
            return f"answered HTTP {status} on /health", SERVER_HINT, status >= 500
        # /health does not touch the database: one read-only REST call does (404 = no such experiment, fine)
        status, body = _request(f"{base}/api/2.0/mlflow/experiments/get-by-name?experiment_name=Default", timeout)
    except TimeoutError:
        return f"did not answer within {timeout:g} s", SERVER_HINT, True
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, ConnectionRefusedError):
            return "refused the connection (nothing listens on that port)", SERVER_HINT, True
        if isinstance(reason, TimeoutError):
            return f"did not answer within {timeout:g} s", SERVER_HINT, True
        if isinstance(reason, socket.gaierror):
            return f"cannot be found (host name {urllib.parse.urlsplit(base).hostname!r} does not resolve)", SERVER_HINT, False
        if isinstance(reason, ssl.SSLError):
            return f"failed the TLS handshake ({reason})", "check MLFLOW_TRACKING_SERVER_CERT_PATH or MLFLOW_TRACKING_INSECURE_TLS", False
        return f"could not be reached ({reason})", SERVER_HINT, True
    except (ConnectionError, http.client.HTTPException) as exc:
        return f"dropped the connection ({type(exc).__name__})", SERVER_HINT, True
    if status in (401, 403):
        return f"refused the login (HTTP {status})", LOGIN_HINT, False
    if status == 200 or (status == 404 and _mlflow_error(body) == "RESOURCE_DOES_NOT_EXIST"):
        return None, "", False
    if status == 404:
        return (
            "has no MLflow REST API (HTTP 404 on /api/2.0/mlflow)",
            "check that register.tracking_uri is the MLflow server's address",
            False,
        )
    return (
        f"answered HTTP {status} on its REST API ({_mlflow_error(body) or 'no MLflow error code'})",
        "its database may be down: see the server's log (`bash scripts/team-mlflow.sh status` on its machine)",
        status >= 500,
    )


def _mlflow_error(body: bytes) -> str:
    try:
        return str(json.loads(body).get("error_code", ""))
    except (ValueError, AttributeError):
        return ""
