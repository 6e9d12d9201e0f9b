"""A small OpenAI-compatible chat-completions server on 127.0.0.1 for tests, speaking real HTTP.

It answers like a model that computes (the offline solver is its brain), records every request, and can
hold a chosen request in flight so a test can kill the client mid-call.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from agent.offline import count_tokens, respond


class LLMServer:
    """Start with `with LLMServer() as server:`; point OPENAI_BASE_URL at `server.base_url`."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._hold_at: int | None = None
        self.held = threading.Event()  # set when the request to hold has arrived
        self.release = threading.Event()
        self._failures: list[tuple[int, dict[str, str]]] = []
        self.delay = 0.0  # seconds each reply takes
        self.in_flight = 0
        self.max_in_flight = 0  # the most requests it was answering at one time
        self._gate: threading.Barrier | None = None
        self._gate_left = 0
        self.gathered = threading.Event()  # set when the requests to gather were all in flight at once
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_POST(self):
                owner._handle(self)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def env(self) -> dict[str, str]:
        """Environment variables that point the real OpenAI client here."""
        return {"OPENAI_API_KEY": "test-key", "OPENAI_BASE_URL": self.base_url}

    def hold(self, number: int) -> None:
        """Keep the `number`-th request (1-based, counted from now on) waiting until `release` is set."""
        with self._lock:
            self._hold_at = len(self.requests) + number
        self.held.clear()
        self.release.clear()

    def gather(self, number: int, timeout: float = 60) -> None:
        """Keep each of the next `number` requests waiting until all of them are in flight at once (then
        `gathered` is set), or `timeout` seconds have passed (then they go on, and it is not): a test of
        parallel callers that does not depend on how fast they start."""
        with self._lock:
            self._gate, self._gate_left = threading.Barrier(number, timeout=timeout), number
        self.gathered.clear()

    def fail(self, status: int, times: int = 1, headers: dict[str, str] | None = None) -> None:
        """Answer the next `times` requests with an HTTP error (e.g. 429 with Retry-After, or 500)."""
        with self._lock:
            self._failures += [(status, headers or {})] * times

    def bodies(self) -> list[str]:
        """Each request's messages, canonical: two calls with the same input compare equal."""
        with self._lock:
            return [json.dumps(r["messages"], sort_keys=True) for r in self.requests]

    def tasks(self) -> list[str]:
        with self._lock:
            return [r["_task"] for r in self.requests]

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        if not handler.path.rstrip("/").endswith("/chat/completions"):
            self._send(handler, 404, {"error": {"message": f"no route {handler.path}"}})
            return
        body = json.loads(handler.rfile.read(int(handler.headers.get("Content-Length", 0))))
        task, mode = self._task_of(body)
        body["_task"] = task
        with self._lock:
            failure = self._failures.pop(0) if self._failures else None
            body["_failed"] = failure[0] if failure else None
            self.requests.append(body)
            number = len(self.requests)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            self._answer(handler, body, task, mode, number, failure)
        finally:
            with self._lock:
                self.in_flight -= 1

    def answered(self) -> list[dict[str, Any]]:
        """The requests that got a reply (not an injected error)."""
        with self._lock:
            return [r for r in self.requests if r["_failed"] is None]

    def _answer(self, handler, body, task, mode, number, failure) -> None:
        with self._lock:
            gate, self._gate_left = (self._gate, self._gate_left - 1) if self._gate_left else (None, 0)
        if gate is not None:
            try:
                gate.wait()
                self.gathered.set()
            except threading.BrokenBarrierError:
                pass
        if number == self._hold_at:
            self.held.set()
            self.release.wait(timeout=60)
        if self.delay:
            time.sleep(self.delay)
        if failure:
            status, headers = failure
            self._send(handler, status, {"error": {"message": f"injected {status}", "type": "test"}}, headers)
            return
        prompt = str(body["messages"][-1]["content"])
        answer = json.dumps(respond(task, prompt))
        message: dict[str, Any] = {"role": "assistant", "content": None}
        if mode == "json_schema":
            message["content"] = answer
        else:
            message["tool_calls"] = [{"id": f"call_{number}", "type": "function",
                                      "function": {"name": task, "arguments": answer}}]
        prompt_tokens = sum(count_tokens(str(m.get("content", ""))) for m in body["messages"])
        completion_tokens = count_tokens(answer)
        self._send(handler, 200, {
            "id": f"chatcmpl-{number}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", "test"),
            "choices": [{"index": 0, "message": message,
                         "finish_reason": "stop" if mode == "json_schema" else "tool_calls"}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        })

    @staticmethod
    def _task_of(body: dict[str, Any]) -> tuple[str, str]:
        fmt = body.get("response_format") or {}
        if fmt.get("type") == "json_schema":
            return fmt["json_schema"]["name"], "json_schema"
        tools = body.get("tools") or []
        if tools:
            return tools[0]["function"]["name"], "function_calling"
        return "", "text"

    @staticmethod
    def _send(handler: BaseHTTPRequestHandler, status: int, payload: dict[str, Any],
              headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        try:
            handler.send_response(status)
            for name, value in (headers or {}).items():
                handler.send_header(name, value)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(data)))
            handler.end_headers()
            handler.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client was killed mid-call
            pass

    def __enter__(self) -> LLMServer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.release.set()
        self._httpd.shutdown()
        self._httpd.server_close()
