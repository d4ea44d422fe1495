"""A small real MCP server, built with the official ``mcp`` SDK, on loopback."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import uvicorn
from mcp.server.mcpserver import MCPServer

HOURS = "Monday: 9 am to 5 pm"


def clinic() -> MCPServer:
    server = MCPServer("clinic")

    @server.tool()
    def opening_hours(day: str) -> str:
        """The clinic's opening hours on a day of the week."""
        return f"{day}: 9 am to 5 pm"

    @server.tool()
    def cancel_booking(booking: str) -> str:
        """Cancel a booking."""
        return f"cancelled {booking}"

    return server


@contextlib.contextmanager
def serve_mcp() -> Iterator[str]:
    """The server's Streamable HTTP endpoint URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(clinic().streamable_http_app(),
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("the MCP server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/mcp"
    finally:
        server.should_exit = True
        thread.join(5)
        sock.close()
