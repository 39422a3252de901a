"""A stand-in for the Hugging Face Hub's HTTP API on 127.0.0.1: just the calls an upload makes.

It answers repo creation, the pre-upload check (every file "regular", so contents travel inline in the commit)
and the commit itself, and keeps what was committed, so a test can read back exactly what `cirbench push`
sent through the real `huggingface_hub` client. Unknown routes answer 404 and are recorded.
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import yaml


@dataclass
class Hub:
    url: str
    repos: dict[str, dict[str, Any]] = field(default_factory=dict)
    """repo id -> {"private": bool, "files": {path: bytes}, "commits": [message, ...]}."""
    requests: list[tuple[str, str]] = field(default_factory=list)
    validated: list[str] = field(default_factory=list)
    """README contents sent to /api/validate-yaml (huggingface_hub checks a card before committing it)."""
    unknown: list[tuple[str, str]] = field(default_factory=list)
    reject_commits: bool = False


def _handler(hub: Hub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:  # quiet
            pass

        def _reply(self, code: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length", 0)))

        def do_POST(self) -> None:  # noqa: N802
            path = self.path.split("?")[0]
            hub.requests.append(("POST", path))
            body = self._body()
            parts = path.strip("/").split("/")
            if path == "/api/validate-yaml":
                content = json.loads(body)["content"]
                hub.validated.append(content)
                front = content.split("---\n")[1] if content.startswith("---\n") else ""
                meta = yaml.safe_load(front) if front else None
                if not isinstance(meta, dict) or not meta:
                    return self._reply(400, {"errors": [{"message": "no metadata block"}]})
                return self._reply(200, {"errors": [], "warnings": []})
            if path == "/api/repos/create":
                req = json.loads(body)
                repo = f"{req['organization']}/{req['name']}" if req.get("organization") else req["name"]
                if req.get("type") != "dataset":
                    return self._reply(400, {"error": "expected a dataset repo"})
                private = req.get("visibility") == "private" or bool(req.get("private"))
                hub.repos.setdefault(repo, {"private": private, "files": {}, "commits": []})
                return self._reply(200, {"url": f"{hub.url}/datasets/{repo}", "name": repo})
            if len(parts) == 6 and parts[:2] == ["api", "datasets"] and parts[4] == "preupload":
                files = json.loads(body)["files"]
                return self._reply(200, {"files": [{"path": f["path"], "uploadMode": "regular",
                                                    "shouldIgnore": False} for f in files]})
            if len(parts) == 6 and parts[:2] == ["api", "datasets"] and parts[4] == "commit":
                repo = f"{parts[2]}/{parts[3]}"
                if repo not in hub.repos:
                    return self._reply(404, {"error": f"repository {repo} not found"})
                if hub.reject_commits:
                    return self._reply(403, {"error": "You don't have the rights to create a commit"})
                lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
                for line in lines:
                    if line["key"] == "header":
                        hub.repos[repo]["commits"].append(line["value"]["summary"])
                    elif line["key"] == "file":
                        value = line["value"]
                        assert value["encoding"] == "base64"
                        hub.repos[repo]["files"][value["path"]] = base64.b64decode(value["content"])
                oid = f"{len(hub.repos[repo]['commits']):040d}"
                return self._reply(200, {"commitUrl": f"{hub.url}/datasets/{repo}/commit/{oid}",
                                         "commitOid": oid, "pullRequestUrl": None})
            hub.unknown.append(("POST", path))
            return self._reply(404, {"error": f"no route {path}"})

        def do_GET(self) -> None:  # noqa: N802
            path = self.path.split("?")[0]
            hub.requests.append(("GET", path))
            hub.unknown.append(("GET", path))
            return self._reply(404, {"error": f"no route {path}"})

    return Handler


@contextmanager
def fake_hub() -> Iterator[Hub]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(Hub(url="")))
    hub = Hub(url=f"http://127.0.0.1:{server.server_address[1]}")
    server.RequestHandlerClass = _handler(hub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield hub
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
