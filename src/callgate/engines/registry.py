"""From a session's ``model`` name to a running engine.

Names resolve through ``Settings.resolve_model`` (the ``[models]`` table, the built-in
``echo``/``local``, and OpenAI's realtime model names as aliases of the default engine). Each
engine kind has one factory in :data:`ENGINE_FACTORIES`; an engine kind is available in this
build exactly when it has an entry there.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from callgate.config import OPENAI_MODEL_PREFIXES, ModelRoute, Settings
from callgate.engines.base import Engine

EngineFactory = Callable[[Settings, ModelRoute], Awaitable[Engine]]


class UnknownModel(ValueError):
    """The session named a model that no route serves (the API answers 400)."""

    def __init__(self, message: str, known: list[str]) -> None:
        super().__init__(message)
        self.known = known


async def _echo(settings: Settings, route: ModelRoute) -> Engine:
    from callgate.engines.echo import EchoEngine

    return EchoEngine()


class EngineUnavailable(RuntimeError):
    """The engine exists but cannot serve a session now (the API answers 5xx)."""


async def _local(settings: Settings, route: ModelRoute) -> Engine:
    from callgate.engines.local import LocalEngine

    engine = LocalEngine(settings, route)
    if down := engine.unavailable_stages():
        raise EngineUnavailable(f"the local engine's {' and '.join(down)} worker keeps "
                                "crashing and is being restarted; see the gateway log "
                                "(worker.crash_loop)")
    return engine


async def _openai_compatible(settings: Settings, route: ModelRoute) -> Engine:
    from callgate.engines.openai_compat import OpenAICompatEngine

    return OpenAICompatEngine(settings, route)


async def _realtime(settings: Settings, route: ModelRoute) -> Engine:
    from callgate.engines.upstream import UpstreamRealtimeEngine

    engine = UpstreamRealtimeEngine(route)
    await engine.connect()  # before the call is answered: a dead upstream fails the accept
    return engine


ENGINE_FACTORIES: dict[str, EngineFactory] = {
    "echo": _echo,
    "local": _local,
    "openai-compatible": _openai_compatible,
    "realtime": _realtime,
}


def known_models(settings: Settings) -> list[str]:
    """Every name a session may use (alias prefixes end in ``*``)."""
    return sorted(settings.model_routes) + [f"{prefix}*" for prefix in OPENAI_MODEL_PREFIXES]


async def create_engine(model: str | None, settings: Settings) -> Engine:
    """A new engine for one session (models inside it are loaded on ``start``)."""
    resolved = settings.resolve_model(model)
    known = known_models(settings)
    if resolved is None:
        raise UnknownModel(f"unknown model {model!r}; known models: {', '.join(known)}", known)
    name, route = resolved
    factory = ENGINE_FACTORIES.get(route.engine)
    if factory is None:
        raise UnknownModel(f"model {name!r} needs the {route.engine!r} engine, which this "
                           f"build does not include; engines: "
                           f"{', '.join(sorted(ENGINE_FACTORIES))}", known)
    return await factory(settings, route)
