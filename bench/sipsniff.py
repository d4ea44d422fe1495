"""INVITE -> 200 OK latency measured on the wire (loopback), with the kernel's timestamps.

SIPp's own response times are counted in its scheduler's clock ticks (4 ms steps on this
machine), too coarse for a 5 ms target and useless for a stateless peer that answers in
microseconds. So we watch the loopback interface with a packet socket instead: the kernel
stamps each datagram (SO_TIMESTAMPNS) when it crosses the interface, and a classic BPF filter
keeps only UDP to or from the SIP port under test, so the watcher costs little and its own
scheduling delays do not enter the numbers. Needs CAP_NET_RAW (root); :func:`available` says.
"""

from __future__ import annotations

import contextlib
import ctypes
import re
import socket
import struct
import threading
import time

_ETH_P_ALL = 0x0003
_ETH_P_IP = 0x0800
_PACKET_OUTGOING = 4      # on lo each datagram is seen leaving and arriving: keep one copy
_SOL_PACKET = 263
_PACKET_STATISTICS = 6
_SO_ATTACH_FILTER = 26
_SO_TIMESTAMPNS = 35
_CALL_ID = re.compile(rb"\r\n(?:call-id|i)[ \t]*:[ \t]*([^\r\n]+)", re.IGNORECASE)
_CSEQ = re.compile(rb"\r\n(?:cseq)[ \t]*:[ \t]*\d+[ \t]+([A-Za-z]+)", re.IGNORECASE)


def _udp_port_filter(port: int) -> list[tuple[int, int, int, int]]:
    """cBPF for a SOCK_DGRAM packet socket (data starts at the IP header): IPv4 UDP, not a
    later fragment, and either an INVITE to ``port`` or a 180/200 from it. Everything else
    (ACK, BYE, 100, other traffic) stays in the kernel, so watching costs little."""
    return [
        (0x30, 0, 0, 9),              # 0  ldb [9]          IP protocol
        (0x15, 0, 13, 17),            # 1  jeq #17 (UDP)    else drop
        (0x28, 0, 0, 6),              # 2  ldh [6]          flags + fragment offset
        (0x45, 11, 0, 0x1FFF),        # 3  jset #0x1fff     a later fragment: drop
        (0xB1, 0, 0, 0),              # 4  ldxb 4*([0]&0xf) IP header length
        (0x48, 0, 0, 0),              # 5  ldh [x+0]        source port
        (0x15, 4, 0, port),           # 6  jeq #port        -> 11 (a response)
        (0x48, 0, 0, 2),              # 7  ldh [x+2]        destination port
        (0x15, 0, 6, port),           # 8  jeq #port        else drop
        (0x40, 0, 0, 8),              # 9  ld [x+8]         first 4 bytes of the payload
        (0x15, 3, 4, 0x494E5649),     # 10 jeq "INVI"       accept, else drop
        (0x40, 0, 0, 16),             # 11 ld [x+16]        payload bytes 8-11: the status
        (0x15, 1, 0, 0x32303020),     # 12 jeq "200 "       accept
        (0x15, 0, 1, 0x31383020),     # 13 jeq "180 "       accept, else drop
        (0x06, 0, 0, 0x40000),        # 14 ret #262144      accept
        (0x06, 0, 0, 0),              # 15 ret #0           drop
    ]


def available() -> bool:
    try:
        socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(_ETH_P_ALL)).close()
    except (OSError, AttributeError):
        return False
    return True


class SipSniffer:
    """Watches ``port`` on loopback; :meth:`take` returns the INVITE -> first 200 (and -> 180)
    latencies, in ms, of the dialogs completed since the last call."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(_ETH_P_ALL))
        prog = _udp_port_filter(port)
        self._prog = (ctypes.c_ubyte * (8 * len(prog))).from_buffer_copy(
            b"".join(struct.pack("HBBI", *ins) for ins in prog))
        fprog = struct.pack("HL", len(prog), ctypes.addressof(self._prog))
        self._sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER, fprog)
        self._sock.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
        with contextlib.suppress(OSError):  # SO_RCVBUFFORCE: past rmem_max, as root
            self._sock.setsockopt(socket.SOL_SOCKET, 33, 32 * 1024 * 1024)
        self._sock.bind(("lo", _ETH_P_ALL))
        self._sock.settimeout(0.2)
        self._lock = threading.Lock()
        self._invites: dict[bytes, float] = {}
        self._ringing: dict[bytes, float] = {}
        self._answered: dict[bytes, float] = {}
        self.packets = 0
        self.cpu_seconds = 0.0  # this watcher's own thread CPU time, reported with the results
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sip-sniffer", daemon=True)

    def __enter__(self) -> SipSniffer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._sock.close()

    @property
    def kernel_drops(self) -> int:
        """Datagrams the kernel dropped for this socket (a full buffer): a count, so a
        reader can tell a lossy measurement from a clean one."""
        raw = self._sock.getsockopt(_SOL_PACKET, _PACKET_STATISTICS, 8)
        return int(struct.unpack("II", raw)[1])

    def _run(self) -> None:
        anc = socket.CMSG_SPACE(16)
        while not self._stop.is_set():
            try:
                data, ancdata, _, addr = self._sock.recvmsg(65535, anc)
            except TimeoutError:
                self.cpu_seconds = time.thread_time()
                continue
            except OSError:
                return
            if addr[2] == _PACKET_OUTGOING or addr[1] != _ETH_P_IP:
                continue
            stamp = time.time()
            for level, kind, value in ancdata:
                if level == socket.SOL_SOCKET and kind == _SO_TIMESTAMPNS:
                    sec, nsec = struct.unpack("qq", value[:16])
                    stamp = sec + nsec / 1e9
            self.packets += 1
            self._packet(data, stamp)
            if not self.packets & 0x3FF:
                self.cpu_seconds = time.thread_time()

    def _packet(self, data: bytes, stamp: float) -> None:
        ihl = (data[0] & 0x0F) * 4
        src, dst = struct.unpack_from("!HH", data, ihl)
        payload = data[ihl + 8:]
        match = _CALL_ID.search(payload)
        if match is None:
            return
        call_id = match.group(1).strip()
        with self._lock:
            if dst == self.port and payload.startswith(b"INVITE "):
                self._invites.setdefault(call_id, stamp)  # a retransmission keeps the first
            elif src == self.port and payload.startswith(b"SIP/2.0 "):
                cseq = _CSEQ.search(payload)
                if cseq is None or cseq.group(1).upper() != b"INVITE":
                    return
                status = payload[8:11]
                if status == b"200":
                    self._answered.setdefault(call_id, stamp)
                elif status == b"180":
                    self._ringing.setdefault(call_id, stamp)

    def take(self) -> tuple[list[float], list[float], int]:
        """(INVITE->200 ms, INVITE->180 ms, INVITEs still unanswered) since the last take;
        the unanswered are kept for the next take."""
        with self._lock:
            answered: list[float] = []
            ringing: list[float] = []
            for call_id, at in self._answered.items():
                sent = self._invites.pop(call_id, None)
                if sent is not None:
                    answered.append((at - sent) * 1000)
                    rang = self._ringing.pop(call_id, None)
                    if rang is not None:
                        ringing.append((rang - sent) * 1000)
            self._answered.clear()
            return answered, ringing, len(self._invites)

    def reset(self) -> None:
        with self._lock:
            self._invites.clear()
            self._ringing.clear()
            self._answered.clear()
