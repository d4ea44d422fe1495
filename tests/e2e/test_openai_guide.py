"""The example from OpenAI's "Realtime API with SIP" guide, run against callgate with only the
two hosts changed: a Flask webhook that verifies the delivery with ``client.webhooks.unwrap``,
POSTs the session to ``/accept`` with ``requests``, then opens the call's WebSocket with plain
``websockets`` and sends ``response.create``."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from pathlib import Path
from typing import Any

import pytest
import requests
import websockets
from flask import Flask, Response, request
from openai import InvalidWebhookSignatureError, OpenAI
from werkzeug.serving import make_server

from tests.e2e.harness import callgate, free_port, sipp
from tests.e2e.receiver import SECRET

pytestmark = pytest.mark.slow

API_KEY = "sk-guide-test"


def guide_app(api_base: str, ws_base: str, received: list[dict[str, Any]]) -> Flask:
    """The guide's handler; only ``api_base``/``ws_base`` differ from api.openai.com."""
    app = Flask(__name__)
    client = OpenAI(api_key=API_KEY, webhook_secret=SECRET)
    auth_header = {"Authorization": "Bearer " + API_KEY}
    call_accept = {
        "type": "realtime",
        "instructions": "You are a support agent.",
        "model": "gpt-4o-realtime-preview-2024-12-17",
    }
    response_create = {
        "type": "response.create",
        "response": {"instructions": "Say to the user 'Thank you for calling, how can I help you'"},
    }

    async def websocket_task(call_id: str) -> None:
        async with websockets.connect(ws_base + "/v1/realtime?call_id=" + call_id,
                                      additional_headers=auth_header) as websocket:
            await websocket.send(json.dumps(response_create))
            while True:
                received.append(json.loads(await websocket.recv()))

    @app.route("/", methods=["POST"])
    def webhook() -> Response:
        try:
            event = client.webhooks.unwrap(request.data, request.headers)
            if event.type == "realtime.call.incoming":
                requests.post(api_base + "/v1/realtime/calls/" + event.data.call_id + "/accept",
                              headers={**auth_header, "Content-Type": "application/json"},
                              json=call_accept, timeout=10)
                threading.Thread(target=lambda: asyncio.run(
                    _quietly(websocket_task(event.data.call_id))), daemon=True).start()
            return Response(status=200)
        except InvalidWebhookSignatureError:
            return Response("Invalid signature", status=400)

    return app


async def _quietly(task: Any) -> None:
    # The caller hung up: callgate closes the call's socket.
    with contextlib.suppress(websockets.ConnectionClosed):
        await task


def test_guide_example_flow(tmp_path: Path) -> None:
    hook_port = free_port(both=False)
    received: list[dict[str, Any]] = []
    with callgate(tmp_path, webhook_url=f"http://127.0.0.1:{hook_port}/",
                  webhook_secret=SECRET, api_key=API_KEY, default_model="echo") as gw:
        app = guide_app(gw.http, f"ws://127.0.0.1:{gw.http_port}", received)
        server = make_server("127.0.0.1", hook_port, app, threaded=True)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            result = sipp(gw, "uac_wait_caller_bye_long", tmp_path)
        finally:
            server.shutdown()
            thread.join(timeout=5)
    assert result.returncode == 0, result.output
    types = [event["type"] for event in received]
    assert types and types[0] == "session.created", types
    assert received[0]["session"]["instructions"] == "You are a support agent."
    # The echo engine can't speak on request: response.create is answered, not ignored.
    assert "response.created" in types or "error" in types, types
