"""One parseable line per event, call id included; noise from refused WebSockets dropped."""

from __future__ import annotations

import json
import logging
import shlex

import pytest

from callgate import log


@pytest.fixture
def lines(capsys: pytest.CaptureFixture[str]):  # type: ignore[no-untyped-def]
    def read() -> list[str]:
        return capsys.readouterr().err.splitlines()

    return read


def test_key_value_lines_parse_back(lines) -> None:  # type: ignore[no-untyped-def]
    log.setup("debug", "text")
    log.event(logging.getLogger("callgate.calls"), "call.state", call_id="rtc_1",
              reason='caller said "bye" = done', old="ringing")
    [line] = lines()
    fields = dict(part.split("=", 1) for part in shlex.split(line))
    assert fields["event"] == "call.state" and fields["call_id"] == "rtc_1"
    assert fields["reason"] == 'caller said "bye" = done'


def test_json_lines(lines) -> None:  # type: ignore[no-untyped-def]
    log.setup("info", "json")
    log.event(logging.getLogger("callgate.sip"), "sip.overload", calls=3)
    doc = json.loads(lines()[0])
    assert doc["event"] == "sip.overload" and doc["calls"] == 3


def test_refused_handshake_noise_is_dropped(lines) -> None:  # type: ignore[no-untyped-def]
    log.setup("info", "text")
    logging.getLogger("callgate.test").error("ASGI callable returned without completing "
                                             "handshake.")
    logging.getLogger("callgate.test").error("something real")
    output = lines()
    assert len(output) == 1 and "something real" in output[0]


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_control_characters_from_the_wire_are_escaped(lines, fmt: str) -> None:  # type: ignore[no-untyped-def]
    log.setup("info", fmt)
    hostile = "Bob\x1b[2J\x07\r\nts=forged level=info\udc8e"
    log.event(logging.getLogger("callgate.sip"), "sip.bad_request", reason=hostile)
    [line] = lines()
    assert not any(ch in line for ch in "\x1b\x07\r\udc8e")
    assert "\\u001b" in line
    if fmt == "text":  # one line still, and the value reads back exactly
        value, _ = json.JSONDecoder().raw_decode(line[line.index("reason=") + 7:])
        assert value == hostile
    else:
        assert json.loads(line)["reason"] == hostile
