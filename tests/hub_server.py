"""A real HTTP server on 127.0.0.1 that speaks the Hugging Face Hub's file protocol, for ``HF_ENDPOINT``.

``huggingface_hub.hf_hub_download`` sends ``HEAD /{repo_id}/resolve/{revision}/{filename}`` and then
``GET`` of the same URL. It needs ``X-Repo-Commit`` (a 40-hex commit) and an ``ETag`` on the HEAD, and
``Content-Length``; a missing file is a 404 with ``X-Error-Code: EntryNotFound``, an unknown repo or
revision ``RepoNotFound`` / ``RevisionNotFound`` (huggingface_hub's ``file_download.py`` and
``utils/_http.py``). Repos are folders on disk: ``root/owner/name/<path in repo>``; one revision,
``main``, or the commit hash itself. Every request is recorded.
"""

from __future__ import annotations

import hashlib
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class HubServer:
    """``with HubServer(root) as hub: os.environ["HF_ENDPOINT"] = hub.url``."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.requests: list[tuple[str, str]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep test output clean
                pass

            def do_HEAD(self) -> None:
                server._answer(self, body=False)

            def do_GET(self) -> None:
                server._answer(self, body=True)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def commit(self, repo_id: str) -> str:
        """The repo's commit hash: a digest of its folder name (stable across runs)."""
        return hashlib.sha1(repo_id.encode()).hexdigest()

    def _answer(self, handler: BaseHTTPRequestHandler, body: bool) -> None:
        path = urllib.parse.unquote(urllib.parse.urlsplit(handler.path).path)
        self.requests.append((handler.command, path))
        parts = path.strip("/").split("/")
        if len(parts) < 5 or parts[2] != "resolve":
            return self._error(handler, 404, "RepoNotFound")
        repo_id, revision, filename = "/".join(parts[:2]), parts[3], "/".join(parts[4:])
        repo = self.root / repo_id
        if not repo.is_dir():
            return self._error(handler, 404, "RepoNotFound")
        commit = self.commit(repo_id)
        if revision not in ("main", commit):
            return self._error(handler, 404, "RevisionNotFound")
        file = repo / filename
        if not file.is_file():
            return self._error(handler, 404, "EntryNotFound", commit)
        data = file.read_bytes()
        handler.send_response(200)
        handler.send_header("X-Repo-Commit", commit)
        handler.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
        handler.send_header("Content-Length", str(len(data)))
        handler.send_header("Content-Type", "application/octet-stream")
        handler.end_headers()
        if body:
            handler.wfile.write(data)

    @staticmethod
    def _error(handler: BaseHTTPRequestHandler, status: int, code: str, commit: str | None = None) -> None:
        message = f"{code}: {handler.path}".encode()
        handler.send_response(status)
        handler.send_header("X-Error-Code", code)
        if commit:
            handler.send_header("X-Repo-Commit", commit)
        handler.send_header("Content-Length", str(len(message)))
        handler.end_headers()
        if handler.command != "HEAD":
            handler.wfile.write(message)

    def __enter__(self) -> "HubServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
