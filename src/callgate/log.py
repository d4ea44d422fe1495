"""Structured logging: one line per event, ``key=value`` pairs, the call id on every call line.

Use :func:`event` rather than ``logger.info(f"...")`` so that every line can be grepped and
parsed by field. ``CALLGATE_LOG_FORMAT=json`` switches the same records to JSON lines.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Any

# Standard LogRecord attributes, plus uvicorn's ANSI-coloured duplicate of its message.
_RESERVED = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"color_message"}


# Control characters (ESC, BEL, CR ...) and lone surrogates come from the wire in SIP headers
# and WebSocket frames: written raw they could drive an operator's terminal or forge lines.
# Quoted, json.dumps escapes them all.
_NEEDS_QUOTES = re.compile(r'[\s"=\x00-\x1f\x7f-\x9f\ud800-\udfff]|^$')


def _quote(value: object) -> str:
    text = str(value)
    return json.dumps(text) if _NEEDS_QUOTES.search(text) else text


class KeyValueFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        parts = [f"ts={ts}.{int(record.msecs):03d}Z", f"level={record.levelname.lower()}",
                 f"logger={record.name}", f"event={_quote(record.getMessage())}"]
        parts += [f"{k}={_quote(v)}" for k, v in _fields(record).items()]
        if record.exc_info:
            parts.append(f"exc={_quote(self.formatException(record.exc_info))}")
        return " ".join(parts)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {"ts": record.created, "level": record.levelname.lower(),
                               "logger": record.name, "event": record.getMessage()}
        doc.update(_fields(record))
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _RESERVED and not k.startswith("_")}


class _RefusedHandshakeNoise(logging.Filter):
    """uvicorn's websockets-sansio protocol logs every WebSocket refused at the handshake
    (our 401/404 answers, by design) as an ASGI error; keep those lines out of the error log."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "without completing handshake" not in record.getMessage()


def setup(level: str = "info", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else KeyValueFormatter())
    handler.addFilter(_RefusedHandshakeNoise())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # uvicorn's access log duplicates our own request lines.
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)


def event(logger: logging.Logger, name: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log one structured event; ``fields`` become ``key=value`` pairs (``call_id`` first)."""
    if logger.isEnabledFor(level):
        logger.log(level, name, extra={k: v for k, v in fields.items() if v is not None})
