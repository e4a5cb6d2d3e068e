"""register.artifact_root as a path, a URI or the server's default, and the one-line preflight of an http(s)
tracking server (flows/tracking.py) against real sockets: closed, silent, failing and non-MLflow servers."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from ssl_components.config import build_config
from ssl_components.errors import ConfigError, PipelineError

ROOT = Path(__file__).resolve().parent.parent


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed when this returns: nothing listens there


@pytest.mark.parametrize(
    "value, expected",
    [
        ("mlflow/artifacts", "mlflow/artifacts"),
        ("./mlflow//artifacts", "mlflow/artifacts"),  # a path is normalised as the old Path type did
        ("/srv/artifacts", "/srv/artifacts"),
        ("s3://team-bucket/ssl", "s3://team-bucket/ssl"),
        ("gs://team-bucket/ssl", "gs://team-bucket/ssl"),
        ("file:///srv/artifacts", "file:///srv/artifacts"),
        ("", None),
        (None, None),
    ],
)
def test_artifact_root_takes_a_path_a_uri_or_nothing(value, expected):
    cfg = build_config({"register": {"artifact_root": value}})
    assert cfg.register_.artifact_root == expected


def test_artifact_root_default_and_its_record_are_unchanged():
    cfg = build_config({})
    assert cfg.register_.artifact_root == "mlflow/artifacts"
    # stage records hash this dump: the same text as when the field was a Path, so no stage goes stale
    assert cfg.register_.model_dump(mode="json")["artifact_root"] == "mlflow/artifacts"


def test_empty_override_means_the_servers_default():
    cfg = build_config({}, overrides=["register.tracking_uri=http://mlflow.team:5000", "register.artifact_root="])
    assert cfg.register_.artifact_root is None and cfg.register_.tracking_uri == "http://mlflow.team:5000"
    served = build_config({"register": {"tracking_uri": "https://mlflow.team", "artifact_root": "mlflow-artifacts:/ssl"}})
    assert served.register_.artifact_root == "mlflow-artifacts:/ssl"


def test_served_artifacts_without_a_server_are_refused_in_one_line():
    with pytest.raises(ConfigError) as exc:
        build_config({"register": {"artifact_root": "mlflow-artifacts:/ssl"}})
    first = str(exc.value).splitlines()[0]
    assert "register" in first and "mlflow-artifacts:/ssl" in first and "tracking_uri" in first


def test_artifact_location_for_mlflow(tmp_path, monkeypatch):
    from flows.tracking import artifact_location

    monkeypatch.chdir(tmp_path)
    assert artifact_location("mlflow/artifacts") == (tmp_path / "mlflow" / "artifacts").as_uri()
    assert artifact_location("s3://b/p") == "s3://b/p" and artifact_location("mlflow-artifacts:/x") == "mlflow-artifacts:/x"
    assert artifact_location(None) is None


def test_registry_on_a_closed_port_fails_fast_in_one_line():
    uri = f"http://127.0.0.1:{closed_port()}"
    env = {**os.environ, "MLFLOW_ENABLE_TELEMETRY": "false", "GX_ANALYTICS_ENABLED": "false"}
    started = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-m", "flows.cli", "registry", "--set", f"register.tracking_uri={uri}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    took = time.monotonic() - started
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("error: ") and uri in lines[0] and "refused the connection" in lines[0]
    assert "team-mlflow.sh" in lines[0] and "Traceback" not in out.stderr
    assert took < 30, f"took {took:.1f} s"


class _Server:
    """A real HTTP server on a free port whose answers the test chooses."""

    def __init__(self, handler: type[BaseHTTPRequestHandler]):
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.uri = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _answering(health: int, api: int, api_body: bytes = b"{}"):
    class Handler(BaseHTTPRequestHandler):
        hits: list[str] = []

        def do_GET(self):  # noqa: N802 (http.server's name)
            Handler.hits.append(self.path)
            status, body = (health, b"OK") if self.path == "/health" else (api, api_body)
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    return Handler


@pytest.mark.parametrize(
    "health, api, api_body, words, tries",
    [
        (503, 200, b"{}", ["answered HTTP 503 on /health", "mlflow server"], 3),
        (401, 200, b"{}", ["refused the login (HTTP 401", "MLFLOW_TRACKING_USERNAME"], 1),
        (200, 403, b"{}", ["refused the login (HTTP 403)", "MLFLOW_TRACKING_PASSWORD"], 1),
        (200, 404, b"<html>not found</html>", ["has no MLflow REST API"], 1),
        (200, 500, b'{"error_code": "INTERNAL_ERROR"}', ["HTTP 500 on its REST API (INTERNAL_ERROR)", "database"], 3),
    ],
)
def test_server_answers_that_are_not_mlflow_give_one_line(health, api, api_body, words, tries):
    from flows.tracking import TrackingUnavailable, check_tracking_server

    handler = _answering(health, api, api_body)
    server = _Server(handler)
    try:
        with pytest.raises(TrackingUnavailable) as exc:
            check_tracking_server(server.uri, again=True)
    finally:
        server.close()
    message = str(exc.value)
    assert isinstance(exc.value, PipelineError) and exc.value.transient is True  # the flow's retries apply
    assert "\n" not in message and message.startswith(f"MLflow tracking server {server.uri} ")
    for w in words:
        assert w in message
    assert handler.hits.count("/health") == tries  # only failures that may pass are tried again


def test_a_working_server_passes_and_is_not_asked_again_at_once():
    from flows.tracking import check_tracking_server

    handler = _answering(200, 404, b'{"error_code": "RESOURCE_DOES_NOT_EXIST"}')
    server = _Server(handler)
    try:
        check_tracking_server(server.uri, again=True)
        check_tracking_server(server.uri)  # answered a moment ago
    finally:
        server.close()
    assert handler.hits == ["/health", "/api/2.0/mlflow/experiments/get-by-name?experiment_name=Default"]


def test_a_silent_server_times_out_in_one_line():
    from flows.tracking import TrackingUnavailable, check_tracking_server

    with socket.socket() as listener:  # accepts connections, never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        uri = f"http://127.0.0.1:{listener.getsockname()[1]}"
        started = time.monotonic()
        with pytest.raises(TrackingUnavailable, match=r"did not answer within 0\.5 s \(2 tries\)"):
            check_tracking_server(uri, again=True, attempts=2, timeout=0.5)
    assert time.monotonic() - started < 5


def test_credentials_in_the_uri_are_not_shown():
    from flows.tracking import TrackingUnavailable, check_tracking_server

    port = closed_port()
    with pytest.raises(TrackingUnavailable) as exc:
        check_tracking_server(f"http://alice:secret@127.0.0.1:{port}", again=True, attempts=1)
    assert "secret" not in str(exc.value) and f"http://127.0.0.1:{port}" in str(exc.value)


def test_mlflow_client_gives_up_in_seconds_with_the_bounded_retries(monkeypatch):
    """MLflow's own HTTP retries (7, about 4 minutes by default) are bounded for this process."""
    from mlflow.exceptions import MlflowException

    from flows.tracking import HTTP_DEFAULTS, prepare_tracking
    from mlflow import MlflowClient

    for key in HTTP_DEFAULTS:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "7")  # one already set is kept
    prepare_tracking("sqlite:///unused.db")  # no server to check: only the retry settings
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "2" and os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "7"
    started = time.monotonic()
    with pytest.raises(MlflowException):
        MlflowClient(f"http://127.0.0.1:{closed_port()}").search_experiments()
    assert time.monotonic() - started < 20
