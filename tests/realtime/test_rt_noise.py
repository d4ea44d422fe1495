"""A session's noise reduction: created off the event loop, and what the session asks for
while it loads is what runs."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from callgate.realtime.noise import NoiseReduction

from .doubles import silence


async def settled(tasks: list[asyncio.Task[None]]) -> None:
    await asyncio.wait_for(asyncio.gather(*tasks), 10)


def reduction() -> tuple[NoiseReduction, list[asyncio.Task[None]]]:
    tasks: list[asyncio.Task[None]] = []

    def spawn(coro: Any) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro)
        tasks.append(task)
        return task

    return NoiseReduction(spawn, {"call_id": "rtc_test"}), tasks


@pytest.mark.anyio
async def test_the_suppressor_loads_off_the_loop_and_audio_passes_until_then() -> None:
    noise, tasks = reduction()
    noise.configure("near_field")
    assert not noise.active and len(tasks) == 1
    frame = bytes(range(256)) * 3 + bytes(192)
    assert noise.process(frame) == frame  # not loaded yet: the caller's audio as it came
    noise.configure("far_field")  # asked again while loading: no second load
    assert len(tasks) == 1
    await settled(tasks)
    assert noise.active
    assert len(noise.process(silence(20))) == len(silence(20))
    noise.close()
    assert not noise.active


@pytest.mark.anyio
async def test_turned_off_while_loading_never_starts() -> None:
    noise, tasks = reduction()
    noise.configure("near_field")
    noise.configure(None)
    await settled(tasks)
    assert not noise.active
