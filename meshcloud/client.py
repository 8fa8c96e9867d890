"""A small client of the local API, used by the CLI (stdlib only: it must start fast)."""

from __future__ import annotations

import http.client
import json
import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

from meshcloud.datadir import DataDir
from meshcloud.errors import MeshError

TIMEOUT = 30.0


class AgentNotRunning(MeshError):
    code = "agent_not_running"


class ApiClient:
    def __init__(self, datadir: DataDir, url: str | None = None) -> None:
        self.datadir = datadir
        if url is None:
            datadir.require()  # no node here at all: say `init`/`join`, not `up`
        info = datadir.runtime_info() if url is None else {"api": url, "pid": None}
        if not info or not info.get("api"):
            raise AgentNotRunning(
                f"no agent is running for {datadir.path}: start it with `meshcloud up`"
            )
        pid = info.get("pid")
        if pid and not pid_alive(pid):
            raise AgentNotRunning(
                f"the agent for {datadir.path} is not running (pid {pid} is gone): "
                f"start it with `meshcloud up`"
            )
        self.url = info["api"].rstrip("/")
        self.token = datadir.api_token()

    def _request(self, method: str, path: str, body: Any = None,
                 timeout: float = TIMEOUT) -> urllib.request.Request:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + path, data=data, method=method)
        request.add_header("Authorization", f"Bearer {self.token}")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        return request

    def call(self, method: str, path: str, body: Any = None, timeout: float = TIMEOUT) -> Any:
        request = self._request(method, path, body)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            raise _api_error(exc) from None
        except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
            reason = getattr(exc, "reason", exc)
            raise AgentNotRunning(f"cannot reach the agent at {self.url}: {reason}") from None
        except http.client.HTTPException as exc:
            raise MeshError(f"the agent at {self.url} broke off its answer "
                            f"({type(exc).__name__})", code="api_error") from None
        return json.loads(raw) if raw else None

    def get(self, path: str) -> Any:
        return self.call("GET", path)

    def post(self, path: str, body: Any = None, timeout: float = TIMEOUT) -> Any:
        return self.call("POST", path, body if body is not None else {}, timeout)

    def delete(self, path: str) -> Any:
        return self.call("DELETE", path)

    def stream_lines(self, path: str) -> Iterator[str]:
        """Lines of a streaming response (logs, server-sent events)."""
        request = self._request("GET", path)
        try:
            response = urllib.request.urlopen(request, timeout=None)
        except urllib.error.HTTPError as exc:
            raise _api_error(exc) from None
        except urllib.error.URLError as exc:
            raise AgentNotRunning(f"cannot reach the agent at {self.url}: {exc.reason}") from None
        with response:
            for raw in response:
                yield raw.decode("utf-8", "replace").rstrip("\n")


def _api_error(exc: urllib.error.HTTPError) -> MeshError:
    try:
        payload = json.loads(exc.read())
        error = payload["error"]
        return MeshError(error["message"], code=error["code"])
    except (ValueError, KeyError, TypeError):
        return MeshError(f"the agent answered HTTP {exc.code} {exc.reason}", code="api_error")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
