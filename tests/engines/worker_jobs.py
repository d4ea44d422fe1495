"""Jobs for the supervisor tests, run inside real worker processes."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

_REMEMBERED: list[str] = []


def count(args: dict[str, Any], stop: threading.Event) -> Iterator[int]:
    yield from range(args["n"])


def whoami(args: dict[str, Any], stop: threading.Event) -> Iterator[int]:
    yield os.getpid()


def refuse(args: dict[str, Any], stop: threading.Event) -> Iterator[int]:
    raise LookupError(f"no such thing: {args['what']}")
    yield 0  # a generator, like every job


def until_stopped(args: dict[str, Any], stop: threading.Event) -> Iterator[str]:
    yield "started"
    deadline = time.monotonic() + 30
    while not stop.is_set() and time.monotonic() < deadline:
        time.sleep(0.005)
    yield "stopped" if stop.is_set() else "never stopped"


def die(args: dict[str, Any], stop: threading.Event) -> Iterator[int]:
    yield 1
    os.kill(os.getpid(), args["signal"])
    time.sleep(30)
    yield 2


def remember(args: dict[str, Any], stop: threading.Event) -> Iterator[str]:
    _REMEMBERED.append(args["what"])
    yield from ()


def recall(args: dict[str, Any], stop: threading.Event) -> Iterator[list[str]]:
    yield list(_REMEMBERED)


SIGKILL = int(signal.SIGKILL)
SIGSEGV = int(signal.SIGSEGV)
