"""A real HTTP server on 127.0.0.1 that speaks enough of Anthropic's Messages API for the tests.

It answers ``POST /v1/messages`` with a proper message JSON, or with the API's error JSON and
status (429 rate limit, 529 overloaded, 401, ...), and records every request (path, headers, JSON
body) so tests can assert the prompt content and the headers the real ``anthropic`` client sent.

Responses come from a script: a list of items consumed in order, each either a string (the
assistant's text), an :class:`Error`, or a callable ``(request_body) -> str | Error`` that
computes the answer from the prompt. When the script is used up, ``default`` answers.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Union

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}


@dataclass
class Error:
    """An API error answer: HTTP ``status`` with Anthropic's error JSON and optional headers."""

    status: int
    message: str = "scripted error"
    headers: dict[str, str] = field(default_factory=dict)


Reply = Union[str, Error, Callable[[dict], Union[str, Error]]]


@dataclass
class RecordedRequest:
    """One request as the server received it."""

    method: str
    path: str
    headers: dict[str, str]
    body: dict[str, Any]

    @property
    def prompt(self) -> str:
        """The concatenated text of the request's user messages."""
        parts = []
        for message in self.body.get("messages", []):
            content = message.get("content")
            if isinstance(content, str):
                parts.append(content)
            else:
                parts.extend(block.get("text", "") for block in content or [])
        return "\n".join(parts)


class FakeMessagesServer:
    """``with FakeMessagesServer(script) as server:`` serves on ``server.base_url`` in a thread."""

    def __init__(self, script: list[Reply] | None = None, default: Reply | None = None):
        self.script: list[Reply] = list(script or [])
        self.default = default
        self.requests: list[RecordedRequest] = []
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> "FakeMessagesServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def _next_reply(self, body: dict) -> str | Error:
        with self._lock:
            reply = self.script.pop(0) if self.script else self.default
        if reply is None:
            return Error(500, "the test server's script is used up")
        return reply(body) if callable(reply) else reply

    def _handler_class(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep the test output quiet
                pass

            def _send(self, status: int, payload: dict, headers: dict[str, str] | None = None) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("request-id", f"req_test_{len(server.requests)}")
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw or b"{}")
                except json.JSONDecodeError:
                    body = {"_unparsable": raw.decode("utf-8", "replace")}
                with server._lock:
                    server.requests.append(
                        RecordedRequest("POST", self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                    )
                if self.path.split("?")[0] != "/v1/messages":
                    self._send(404, {"type": "error", "error": {"type": "not_found_error", "message": self.path}})
                    return
                reply = server._next_reply(body)
                if isinstance(reply, Error):
                    kind = _ERROR_TYPES.get(reply.status, "api_error")
                    self._send(reply.status, {"type": "error", "error": {"type": kind, "message": reply.message}}, reply.headers)
                    return
                n = len(server.requests)
                self._send(
                    200,
                    {
                        "id": f"msg_test_{n:04d}",
                        "type": "message",
                        "role": "assistant",
                        "model": body.get("model", "unknown"),
                        "content": [{"type": "text", "text": reply}],
                        "stop_reason": "end_turn",
                        "stop_sequence": None,
                        "usage": {"input_tokens": len(json.dumps(body)) // 4, "output_tokens": max(1, len(reply) // 4)},
                    },
                )

        return Handler
