from __future__ import annotations

import asyncio
from typing import Any

from callgate.engines.base import AudioDelta, EngineError, ResponseDone, ResponseRequest
from callgate.engines.echo import EchoEngine


def test_pushed_frames_come_back_in_order() -> None:
    async def main() -> list[bytes]:
        engine = EchoEngine()
        assert engine.duplex
        out: list[bytes] = []

        async def read() -> None:
            async for ev in engine.events():
                assert isinstance(ev, AudioDelta)
                out.append(ev.pcm)

        reader = asyncio.create_task(read())
        for i in range(5):
            engine.push_audio(bytes([i]) * 960)
            await asyncio.sleep(0)
        await engine.aclose()
        await asyncio.wait_for(reader, 1)
        return out

    assert asyncio.run(main()) == [bytes([i]) * 960 for i in range(5)]


def test_a_slow_reader_loses_the_oldest_frames_not_the_newest() -> None:
    async def main() -> tuple[list[bytes], int]:
        engine = EchoEngine(max_frames=3)
        for i in range(10):
            engine.push_audio(bytes([i]) * 4)
        await engine.aclose()
        return [ev.pcm async for ev in engine.events() if isinstance(ev, AudioDelta)], \
            engine.dropped_frames

    frames, dropped = asyncio.run(main())
    assert frames == [bytes([8]) * 4, bytes([9]) * 4]  # the third slot went to the close mark
    assert dropped == 8


def test_echo_neither_transcribes_nor_responds() -> None:
    async def main() -> tuple[list[Any], list[Any]]:
        engine = EchoEngine()
        heard = [ev async for ev in engine.transcribe(bytes(960))]
        said = [ev async for ev in engine.respond(ResponseRequest("be brief", []))]
        return heard, said

    heard, said = asyncio.run(main())
    assert len(heard) == 1 and isinstance(heard[0], EngineError)
    assert "does not transcribe" in heard[0].message
    assert isinstance(said[0], EngineError) and "does not respond" in said[0].message
    assert said[-1] == ResponseDone(status="failed", reason="not_supported")
