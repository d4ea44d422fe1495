"""SIPp plays recorded media into a call: the G.711 A-law capture and RFC 2833 (RFC 4733)
telephone-event captures that SIPp ships (issue 3 "Must show" 2).

The application side is the official ``openai`` SDK only: a webhook receiver accepts the
call with the ``echo`` model and attaches to it with ``client.realtime.connect(call_id=…)``;
the digits must arrive there as ``input_audio_buffer.dtmf_event_received``, in the order they
were pressed, each once (every capture repeats its end packet three times, RFC 4733 §2.5.1.4).
That every captured audio packet arrived is read from the ``call.media_stats`` line callgate
logs when the call ends.

SIPp replays captures through a raw socket (it rewrites the UDP ports), which needs
CAP_NET_RAW; without it the test is skipped.
"""

from __future__ import annotations

import shutil
import socket
import struct
import threading
from pathlib import Path
from typing import Any

import openai
import pytest
from openai.types.realtime import InputAudioBufferDtmfEventReceivedEvent

from tests.e2e.baresip import call_stats, logged
from tests.e2e.harness import callgate, sipp
from tests.e2e.receiver import SECRET, Receiver

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

API_KEY = "sk-callgate-dtmf-test"
AUDIO_CAPTURE = "g711a.pcap"
# The scenario plays these, in this order (uac_pcap_dtmf.xml).
DIGIT_CAPTURES = {"1": "dtmf_2833_1.pcap", "2": "dtmf_2833_2.pcap", "3": "dtmf_2833_3.pcap",
                  "#": "dtmf_2833_pound.pcap"}
PCMA_PT, TELEPHONE_EVENT_PT = 8, 101  # what the scenario's SDP offers
RFC4733_EVENTS = "0123456789*#ABCD"


def captures_dir() -> Path | None:
    """The folder holding SIPp's sample captures: ``share/sip-tester*`` (Debian) beside the
    ``sipp`` binary's prefix, or a ``pcap`` folder next to a source-built ``sipp``."""
    binary = shutil.which("sipp")
    if binary is None:
        return None
    here = Path(binary).resolve().parent
    for folder in [*sorted((here.parent / "share").glob("sip-tester*")), here / "pcap"]:
        if (folder / AUDIO_CAPTURE).exists():
            return folder
    return None


def rtp_packets(path: Path) -> list[bytes]:
    """The UDP payloads (RTP packets) of a classic libpcap file of Ethernet or Linux-cooked
    IPv4/UDP frames."""
    data = path.read_bytes()
    magic = data[:4]
    endian = {b"\xd4\xc3\xb2\xa1": "<", b"\xa1\xb2\xc3\xd4": ">"}[magic]
    link = struct.unpack(endian + "I", data[20:24])[0]
    link_header = {1: 14, 113: 16}[link]
    packets, offset = [], 24
    while offset + 16 <= len(data):
        length = struct.unpack(endian + "I", data[offset + 8:offset + 12])[0]
        frame = data[offset + 16:offset + 16 + length]
        offset += 16 + length
        ip = frame[link_header:]
        if ip[0] >> 4 != 4 or ip[9] != socket.IPPROTO_UDP:
            continue
        udp = ip[(ip[0] & 0x0F) * 4:]
        packets.append(udp[8:struct.unpack(">H", udp[4:6])[0]])
    return packets


def can_send_raw() -> bool:
    try:
        socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP).close()
    except PermissionError:
        return False
    return True


def test_pcap_audio_arrives_and_digits_reach_the_sdk_in_order(tmp_path: Path) -> None:
    folder = captures_dir()
    if folder is None:
        pytest.skip("SIPp's sample captures were not found (Debian package sip-tester)")
    if not can_send_raw():
        pytest.skip("SIPp plays captures through a raw socket: needs CAP_NET_RAW")

    # The captures are what the scenario's SDP announces: A-law audio, telephone-events at
    # payload type 101, one RFC 4733 event code per capture.
    audio = rtp_packets(folder / AUDIO_CAPTURE)
    assert audio and {p[1] & 0x7F for p in audio} == {PCMA_PT}
    digit_packets: list[bytes] = []
    for digit, name in DIGIT_CAPTURES.items():
        packets = rtp_packets(folder / name)
        assert {p[1] & 0x7F for p in packets} == {TELEPHONE_EVENT_PT}, name
        assert {RFC4733_EVENTS[p[12]] for p in packets} == {digit}, name
        digit_packets += packets
    (tmp_path / "pcap").symlink_to(folder, target_is_directory=True)

    ports: dict[str, int] = {}
    seen: list[Any] = []
    closed = threading.Event()

    def accept_and_listen(client: openai.OpenAI, call_id: str) -> None:
        client.realtime.calls.accept(call_id, type="realtime", model="echo")
        app = openai.OpenAI(api_key=API_KEY, base_url=str(client.base_url),
                            websocket_base_url=f"ws://127.0.0.1:{ports['http']}/v1",
                            max_retries=0)
        try:
            with app.realtime.connect(call_id=call_id) as connection:
                for server_event in connection:  # ends when the call's session closes
                    seen.append(server_event)
        finally:
            closed.set()

    receiver = Receiver("http://unused/v1", accept_and_listen, api_key=API_KEY)
    with callgate(tmp_path, webhook_url=receiver.url, webhook_secret=SECRET,
                  api_key=API_KEY) as gw:
        ports["http"] = gw.http_port
        receiver.client = receiver.client.with_options(base_url=f"{gw.http}/v1")
        with receiver:
            result = sipp(gw, "uac_pcap_dtmf", tmp_path, timeout=40)
            assert closed.wait(timeout=10), "the WebSocket stayed open after the call ended"
        stats = call_stats(gw)
        logged_digits = [f["digit"] for f in logged(gw, "media.dtmf_received")]

    assert result.returncode == 0 and result.successful == 1, result.output
    assert not receiver.errors, receiver.errors

    digits = [e.event for e in seen if isinstance(e, InputAudioBufferDtmfEventReceivedEvent)]
    print(f"digits on the WebSocket: {digits}; packets_in={stats['packets_in']} "
          f"bytes_in={stats['bytes_in']} dtmf_in={stats['dtmf_in']} codec={stats['codec']}")
    assert seen and seen[0].type == "session.created"
    assert digits == list(DIGIT_CAPTURES), (digits, [e.type for e in seen])
    assert logged_digits == list(DIGIT_CAPTURES)

    # Every captured packet arrived and was taken: the audio (236 A-law packets) and the
    # telephone-events (ten per digit, the end packet three times).
    assert stats["codec"] == "PCMA"
    assert int(stats["packets_in"]) == len(audio) + len(digit_packets), stats
    assert int(stats["bytes_in"]) == sum(map(len, audio + digit_packets)), stats
    assert stats["dtmf_in"] == str(len(DIGIT_CAPTURES)), stats
    for counter in ("unknown_pt", "malformed", "decode_errors", "foreign_packets"):
        assert stats[counter] == "0", (counter, stats)
    assert int(stats["packets_out"]) > 200, stats  # the echo went back to SIPp
