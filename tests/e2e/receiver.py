"""A webhook receiver written only against the official ``openai`` package, as an application
built for OpenAI's SIP interface would be."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import openai
from flask import Flask, Response, request
from werkzeug.serving import make_server

SECRET = "whsec_" + "Y2FsbGdhdGUtdGVzdC13ZWJob29rLXNlY3JldA=="


class Receiver:
    """Verifies each delivery with ``client.webhooks.unwrap`` and hands the call id to
    ``action(client, call_id)`` on a thread of its own, answering the delivery with 200."""

    def __init__(self, base_url: str, action: Callable[[openai.OpenAI, str], None], *,
                 status: int = 200, api_key: str = "sk-test") -> None:
        self.client = openai.OpenAI(api_key=api_key, base_url=base_url, webhook_secret=SECRET)
        self.action = action
        self.status = status
        self.events: list[Any] = []
        self.errors: list[BaseException] = []
        app = Flask("receiver")
        app.add_url_rule("/hook", "hook", self._hook, methods=["POST"])
        self._server = make_server("127.0.0.1", 0, app, threaded=True)
        self.port = self._server.server_port
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._workers: list[threading.Thread] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def _hook(self) -> Response:
        try:
            event = self.client.webhooks.unwrap(request.get_data(), request.headers)
        except openai.InvalidWebhookSignatureError as exc:
            self.errors.append(exc)
            return Response("invalid signature", status=400)
        self.events.append(event)
        if event.type == "realtime.call.incoming":
            worker = threading.Thread(target=self._run, args=(event.data.call_id,), daemon=True)
            self._workers.append(worker)
            worker.start()
        return Response(status=self.status)

    def wait_for(self, kind: str, timeout: float = 10.0) -> bool:
        """Whether a delivery of type ``kind`` arrived within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not any(e.type == kind for e in self.events):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True

    def _run(self, call_id: str) -> None:
        try:
            self.action(self.client, call_id)
        except BaseException as exc:  # surfaced by the test through .errors
            self.errors.append(exc)

    def __enter__(self) -> Receiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        for worker in self._workers:
            worker.join(timeout=10)
        self._server.shutdown()
        self._thread.join(timeout=5)
