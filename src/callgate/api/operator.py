"""callgate's own operator surface, beside OpenAI's: ``/metrics``, call records, recordings,
and the web console.

All of it is behind the API key when one is set, except the console's static page, which
holds no data and asks for the key itself. The routes under ``/v1/realtime/calls`` are GET
only: a record list paginated the way OpenAI's lists are (``data``, ``first_id``,
``last_id``, ``has_more``; ``after`` and ``limit``), one record, its transcript and its
recording (with HTTP Range requests, so a browser can seek in it).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query
from fastapi.responses import FileResponse, Response, StreamingResponse

from callgate.api.app import CALLS_PREFIX, CallId
from callgate.api.auth import require_api_key
from callgate.api.errors import ApiError
from callgate.observe.live import CallWatch
from callgate.observe.metrics import CONTENT_TYPE_LATEST, GatewayMetrics
from callgate.observe.records import DatabaseUnavailable, RecordStore

CallStateName = Literal["incoming", "ringing", "accepted", "active", "ended", "rejected",
                        "cancelled", "timed_out", "failed"]
KEEPALIVE_SECONDS = 15.0
CONSOLE_FILES = {"index.html": "text/html", "console.js": "text/javascript",
                 "console.css": "text/css"}


def make_operator_router(*, api_key: str | None, metrics: GatewayMetrics, watch: CallWatch,
                         records: RecordStore | None, recordings: Path) -> APIRouter:
    auth = [Depends(require_api_key(api_key))] if api_key is not None else []
    router = APIRouter()
    private = APIRouter(dependencies=auth)

    @private.get("/metrics", tags=["operator"], operation_id="metrics",
                 summary="Prometheus metrics (callgate extension)")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @private.get(CALLS_PREFIX, tags=["records"], operation_id="listCalls",
                 summary="Call records, newest first (callgate extension)")
    async def list_calls(
            limit: Annotated[int, Query(ge=1, le=100)] = 20,
            after: Annotated[str | None, Query(max_length=64)] = None,
            direction: Literal["inbound", "outbound"] | None = None,
            state: CallStateName | None = None,
            since: Annotated[float | None, Query(description="Started at or after (Unix s).")]
            = None,
            until: Annotated[float | None, Query(description="Started before (Unix s).")] = None,
            search: Annotated[str | None, Query(max_length=200, description="Part of the "
                                                "caller, callee or call id.")] = None,
    ) -> dict[str, Any]:
        if records is None:
            data, more = _list_live(watch, limit=limit, after=after, direction=direction,
                                    state=state, since=since, until=until, search=search)
        else:
            try:
                data, more = await records.list_calls(
                    limit=limit, after=after, direction=direction, state=state, since=since,
                    until=until, search=search)
            except KeyError:
                raise ApiError(400, f"No call with id {after} to list after.",
                               param="after", code="invalid_cursor") from None
            except DatabaseUnavailable as exc:
                raise _unavailable(exc) from None
            data = [_fresher(watch, record) for record in data]
        return {"object": "list", "data": [_summary(r) for r in data],
                "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None, "has_more": more}

    @private.get(CALLS_PREFIX + "/{call_id}", tags=["records"], operation_id="getCall",
                 summary="One call's record (callgate extension)")
    async def get_call(call_id: CallId) -> dict[str, Any]:
        return _summary(await _record(watch, records, call_id))

    @private.get(CALLS_PREFIX + "/{call_id}/transcript", tags=["records"],
                 operation_id="getCallTranscript",
                 summary="What was said on a call, with per-turn latency (callgate extension)")
    async def get_transcript(call_id: CallId) -> dict[str, Any]:
        record = await _record(watch, records, call_id)
        return {"object": "realtime.call.transcript", "call_id": call_id,
                "data": record["transcript"], "turns": record["turns"]}

    @private.get(CALLS_PREFIX + "/{call_id}/content", tags=["records"],
                 operation_id="getCallContent", response_class=FileResponse,
                 summary="The call's recording, a stereo WAV (callgate extension)")
    async def get_content(call_id: CallId) -> FileResponse:
        record = await _record(watch, records, call_id)
        name = record.get("recording_file")
        live = watch.find(call_id)
        if live is not None and live.recording is not None:
            if live.ended_at is None:
                raise ApiError(409, f"Call {call_id} is still being recorded.",
                               code="recording_in_progress")
            name = Path(live.recording).name
        path = recordings / name if name else None
        if path is None or not path.is_file():
            raise ApiError(404, f"Call {call_id} has no recording.", param="call_id",
                           code="recording_not_found")
        return FileResponse(path, media_type="audio/wav", filename=f"{call_id}.wav")

    @private.get("/console/events", tags=["console"], operation_id="consoleEvents",
                 summary="Live updates for the console, one JSON object per line")
    async def console_events() -> StreamingResponse:
        return StreamingResponse(_stream(watch), media_type="application/x-ndjson",
                                 headers={"cache-control": "no-store"})

    router.include_router(private)

    @router.get("/console", include_in_schema=False)
    async def console() -> Response:
        return _asset("index.html")

    @router.get("/console/{name}", include_in_schema=False)
    async def console_asset(name: str) -> Response:
        if name not in CONSOLE_FILES:
            raise ApiError(404, f"No console file {name!r}.", code="not_found")
        return _asset(name)

    return router


def _asset(name: str) -> Response:
    body = resources.files("callgate.observe").joinpath("console", name).read_bytes()
    return Response(body, media_type=CONSOLE_FILES[name],
                    headers={"cache-control": "no-cache",
                             "content-security-policy": "default-src 'self'; "
                             "media-src 'self' blob:; img-src 'self' data:"})


async def _record(watch: CallWatch, records: RecordStore | None,
                  call_id: str) -> dict[str, Any]:
    live = watch.find(call_id)
    if live is not None:
        return {**live.record(), "recording_file": (Path(live.recording).name
                                                    if live.recording else None)}
    record = None
    if records is not None:
        try:
            record = await records.get(call_id)
        except DatabaseUnavailable as exc:
            raise _unavailable(exc) from None
    if record is None:
        raise ApiError(404, f"No call found with id {call_id}.", param="call_id",
                       code="call_not_found")
    return record


def _fresher(watch: CallWatch, record: dict[str, Any]) -> dict[str, Any]:
    """A call still in memory is newer there than in the database (writes lag a little)."""
    live = watch.find(record["id"])
    return live.record() if live is not None else record


def _summary(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items()
            if k not in ("recording_path", "recording_file")}


def _list_live(watch: CallWatch, *, limit: int, after: str | None, direction: str | None,
               state: str | None, since: float | None, until: float | None,
               search: str | None) -> tuple[list[dict[str, Any]], bool]:
    """Without a database: the calls in memory (live, then recently ended), same filters."""
    calls = sorted([*watch.calls.values(), *watch.recent], key=lambda c: (c.started_at, c.id),
                   reverse=True)
    if after is not None:
        ids = [c.id for c in calls]
        if after not in ids:
            raise ApiError(400, f"No call with id {after} to list after.", param="after",
                           code="invalid_cursor")
        calls = calls[ids.index(after) + 1:]
    needle = (search or "").lower()
    chosen = [c.record() for c in calls
              if (direction is None or c.direction == direction)
              and (state is None or c.state == state)
              and (since is None or c.started_at >= since)
              and (until is None or c.started_at < until)
              and (not needle or needle in f"{c.from_uri} {c.to_uri} {c.id}".lower())]
    return chosen[:limit], len(chosen) > limit


def _unavailable(exc: DatabaseUnavailable) -> ApiError:
    return ApiError(503, f"The call records database is unavailable: {exc}",
                    type="server_error", code="records_unavailable",
                    headers={"Retry-After": "5"})


async def _stream(watch: CallWatch) -> AsyncIterator[bytes]:
    """A snapshot of the live calls, then every change as it happens; a keep-alive line
    when nothing happens so proxies keep the connection open."""
    queue = watch.watch()
    try:
        snapshot = [c.record() for c in watch.calls.values()]
        yield _line({"type": "snapshot", "data": {"calls": snapshot, "at": time.time()}})
        while True:
            try:
                update = await asyncio.wait_for(queue.get(), KEEPALIVE_SECONDS)
            except TimeoutError:
                if queue not in watch.viewers:
                    return  # cut off for reading too slowly: the page reconnects
                yield _line({"type": "keepalive", "data": {"at": time.time()}})
                continue
            yield _line(update)
    finally:
        watch.unwatch(queue)


def _line(update: dict[str, Any]) -> bytes:
    return json.dumps(update, separators=(",", ":"), default=str).encode() + b"\n"
