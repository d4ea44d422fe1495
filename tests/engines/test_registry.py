from __future__ import annotations

import asyncio

import pytest

from callgate.config import ModelRoute, Settings
from callgate.engines.echo import EchoEngine
from callgate.engines.local import LocalEngine
from callgate.engines.openai_compat import OpenAICompatEngine
from callgate.engines.registry import ENGINE_FACTORIES, UnknownModel, create_engine


def _settings() -> Settings:
    return Settings(models={
        "compat": ModelRoute(engine="openai-compatible", url="http://127.0.0.1:9/v1"),
        "upstream": ModelRoute(engine="realtime", url="wss://example.invalid/v1/realtime"),
    })


def test_names_resolve_to_engines() -> None:
    async def main() -> None:
        settings = _settings()
        assert isinstance(await create_engine("echo", settings), EchoEngine)
        for name in ("local", None, "gpt-realtime", "gpt-4o-realtime-preview-2024-12-17"):
            engine = await create_engine(name, settings)
            assert isinstance(engine, LocalEngine)
            await engine.aclose()
        compat = await create_engine("compat", settings)
        assert isinstance(compat, OpenAICompatEngine)
        await compat.aclose()

    asyncio.run(main())


def test_an_unknown_name_is_refused_with_the_known_ones() -> None:
    with pytest.raises(UnknownModel) as info:
        asyncio.run(create_engine("whisper-large", _settings()))
    assert isinstance(info.value, ValueError)
    message = str(info.value)
    for name in ("echo", "local", "compat", "gpt-realtime*"):
        assert name in message
    assert "compat" in info.value.known


def test_a_route_to_an_engine_this_build_lacks_is_refused(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(ENGINE_FACTORIES, "realtime")
    with pytest.raises(UnknownModel, match="'realtime' engine"):
        asyncio.run(create_engine("upstream", _settings()))
