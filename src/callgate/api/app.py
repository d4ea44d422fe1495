"""The HTTP API: OpenAI-compatible call control over REST, plus health and OpenAPI.

``/openapi.json`` is served only with ``api_docs`` on, and then behind the API key when one is
set: the document maps out every verb for whoever can reach the port.

Paths, bodies and answers follow OpenAI's Realtime SIP interface (openai-wire.md §2) so the
``openai`` SDK's ``client.realtime.calls.accept/reject/refer/hangup`` work against callgate
by changing only ``base_url``. Success is HTTP 200 with ``{}``: some clients parse the body
as JSON. The verbs themselves are carried out by a :class:`CallControl`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Path, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse

from callgate import __version__
from callgate.api.auth import bearer_matches, require_api_key, unauthorized
from callgate.api.errors import ApiError, ErrorGuard, install_error_handlers
from callgate.api.schemas import (
    AcceptRequest,
    CallResource,
    DialRequest,
    Empty,
    ErrorResponse,
    Health,
    ReferRequest,
    RejectRequest,
    TrunkList,
    TrunkStatus,
)
from callgate.calls.control import CallControl
from callgate.config import OPENAI_MODEL_PREFIXES, Settings

CALLS_PREFIX = "/v1/realtime/calls"
# The largest request body read; a session config with long instructions and many tools is
# well under this.
MAX_BODY_BYTES = 1 << 20

CallId = Annotated[str, Path(description="The call id from the realtime.call.incoming webhook "
                                         "(rtc_...).")]


def _error(description: str, **extra: Any) -> dict[str, Any]:
    return {"model": ErrorResponse, "description": description, **extra}


def _call_responses(auth: bool) -> dict[int | str, dict[str, Any]]:
    responses: dict[int | str, dict[str, Any]] = {
        400: _error("Invalid request body or parameter (param names the field)."),
        404: _error("No such call (unknown or already ended) or no such route."),
        409: _error("The call is in a state where this verb no longer applies.",
                    headers={"x-should-retry": {
                        "description": "Always false: retrying will not resolve a conflict.",
                        "schema": {"type": "string", "enum": ["false"]}}}),
        413: _error("The request body is too large."),
        500: _error("Unexpected server error."),
    }
    if auth:
        responses[401] = _error("Missing or wrong API key.")
    return responses


def create_app(settings: Settings, control: CallControl, *,
               extra_routers: Sequence[APIRouter] = (),
               on_recording: Callable[[str, bool], None] | None = None) -> FastAPI:
    """The FastAPI application serving call control for ``control``.

    ``on_recording`` hears a call's ``recording`` choice from its accept body (a callgate
    extension; the session config goes on without it).

    ``extra_routers`` (the realtime WebSocket router) are mounted as they are; they do their
    own authentication with :func:`callgate.api.auth.bearer_matches`.
    """
    app = FastAPI(title="callgate", version=__version__, openapi_url=None,
                  docs_url=None, redoc_url=None, redirect_slashes=False,
                  description="Call control compatible with OpenAI's Realtime SIP interface.")
    api_key = settings.api_key

    def check_auth(request: Request) -> ApiError | None:
        path = request.url.path
        if path != CALLS_PREFIX and not path.startswith(CALLS_PREFIX + "/"):
            return None
        if bearer_matches(api_key, request.headers.get("authorization")):
            return None
        return unauthorized()

    install_error_handlers(app, check_auth=check_auth)
    app.add_middleware(ErrorGuard, max_body=MAX_BODY_BYTES)

    router = APIRouter(
        prefix=CALLS_PREFIX, tags=["calls"], responses=_call_responses(api_key is not None),
        dependencies=[Depends(require_api_key(api_key))] if api_key is not None else [])

    @router.post("", response_model=CallResource, operation_id="createCall",
                 summary="Place an outbound call through a SIP trunk (JSON body)")
    async def create_call(body: DialRequest) -> CallResource:
        session = (body.session.model_dump(mode="json", exclude_unset=True) if body.session
                   else dict(settings.default_session))
        _check_model(settings, session.get("model"))
        transport = body.transport.model_dump(mode="json", exclude_unset=True)
        return CallResource.model_validate(await control.dial(session, transport))

    @router.post("/{call_id}/accept", response_model=Empty, operation_id="acceptCall",
                 summary="Answer a ringing call and start its realtime session")
    async def accept(call_id: CallId, body: AcceptRequest) -> Empty:
        _check_model(settings, body.model)
        # Fields the client set, explicit nulls included: null means "off" for
        # turn_detection, noise_reduction, transcription and tracing.
        session = body.model_dump(mode="json", exclude_unset=True)
        recording = session.pop("recording", None)
        if recording is not None and on_recording is not None:
            on_recording(call_id, recording)
        await control.accept(call_id, session)
        return Empty()

    @router.post("/{call_id}/reject", response_model=Empty, operation_id="rejectCall",
                 summary="Answer a ringing call with a final SIP error status")
    async def reject(call_id: CallId, body: RejectRequest | None = None) -> Empty:
        await control.reject(call_id, (body or RejectRequest()).status_code)
        return Empty()

    @router.post("/{call_id}/refer", response_model=Empty, operation_id="referCall",
                 summary="Transfer the call with SIP REFER")
    async def refer(call_id: CallId, body: ReferRequest) -> Empty:
        await control.refer(call_id, body.target_uri)
        return Empty()

    @router.post("/{call_id}/hangup", response_model=Empty, operation_id="hangupCall",
                 summary="End the call")
    async def hangup(call_id: CallId) -> Empty:
        await control.hangup(call_id)
        return Empty()

    app.include_router(router)

    @app.get("/v1/trunks", response_model=TrunkList, operation_id="listTrunks", tags=["trunks"],
             summary="The configured trunks and their registrations (callgate extension)",
             responses={401: _error("Missing or wrong API key.")} if api_key is not None
             else {},
             dependencies=[Depends(require_api_key(api_key))] if api_key is not None else [])
    async def list_trunks() -> TrunkList:
        return TrunkList(data=[TrunkStatus.model_validate(t) for t in control.trunks()])

    @app.get("/healthz", response_model=Health, operation_id="health", tags=["health"])
    async def healthz() -> Health:
        return Health(status="ok")

    for extra in extra_routers:
        app.include_router(extra)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version,
                                 description=app.description, routes=app.routes)
            _drop_unused_422(schema)
            _document_models(schema, settings)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    if settings.api_docs:
        @app.get("/openapi.json", include_in_schema=False,
                 dependencies=[Depends(require_api_key(api_key))] if api_key is not None else [])
        async def openapi_document() -> JSONResponse:
            return JSONResponse(app.openapi())
    return app


def _check_model(settings: Settings, name: str | None) -> None:
    if name is None or (name and settings.resolve_model(name) is not None):
        return
    known = ", ".join(sorted(settings.model_routes))
    aliases = ", ".join(f"{prefix}*" for prefix in OPENAI_MODEL_PREFIXES)
    raise ApiError(400, f"Unknown model '{name}'. Known models: {known}. OpenAI realtime model "
                   f"names ({aliases}) are accepted as aliases of the default model "
                   f"'{settings.default_model}'.", param="model", code="model_not_found")


def _drop_unused_422(schema: dict[str, Any]) -> None:
    # Validation errors are answered with 400 in OpenAI's shape, never FastAPI's 422.
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            operation.get("responses", {}).pop("422", None)
    components = schema.get("components", {}).get("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)


def _document_models(schema: dict[str, Any], settings: Settings) -> None:
    """Spell out which ``model`` values this server accepts (its routes and the aliases)."""
    accept = schema.get("components", {}).get("schemas", {}).get("AcceptRequest")
    if accept is None:
        return
    prefixes = "|".join(p.replace(".", r"\.") for p in OPENAI_MODEL_PREFIXES)
    accept["properties"]["model"] = {
        "anyOf": [{"type": "string", "enum": sorted(settings.model_routes)},
                  {"type": "string", "pattern": f"^(?:{prefixes})"},
                  {"type": "null"}],
        "description": "A configured model name, or an OpenAI realtime model name (any name "
                       f"starting with {', '.join(OPENAI_MODEL_PREFIXES)}), which runs on the "
                       f"default model '{settings.default_model}'. Unset: the default model.",
    }
