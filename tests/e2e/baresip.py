"""A headless baresip (Debian ``baresip-core``, v1.0.0) placing one call, for the media tests.

baresip reads what it says from a WAV file (the ``aufile`` source: the file must have the
codec's own sample rate and channel count) and the ``sndfile`` filter dumps what it sent
(``dump-*-enc.wav``, before the encoder) and what it heard (``dump-*-dec.wav``, after the
decoder) from the moment the call's audio starts, so both files share one clock. When the
source file ends baresip hangs up; the caller then stops the process (``-t`` bounds it too).
``-s`` puts the SIP trace in the log: the test can read what baresip offered (keys included).
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.e2e.audio import Samples, read_wav
from tests.e2e.harness import Gateway, free_port


@dataclass(frozen=True, slots=True)
class BaresipCodec:
    """baresip's name for a codec (``audio_codecs`` wants name/rate/channels) and the format
    its aufile source must be in."""

    name: str
    rate: int
    channels: int

    @property
    def spec(self) -> str:
        return f"{self.name}/{self.rate}/{self.channels}"


# Opus is always 48000/2 in SDP (RFC 7587 §7); baresip then runs its audio path in stereo.
CODECS = {
    "PCMU": BaresipCodec("PCMU", 8000, 1),
    "PCMA": BaresipCodec("PCMA", 8000, 1),
    "G722": BaresipCodec("G722", 16000, 1),
    "opus": BaresipCodec("opus", 48000, 2),
}

_CONFIG = """\
poll_method\tpoll
sip_listen\t127.0.0.1:0
net_interface\t127.0.0.1
{tls}module_path\t{module_path}
module\tstdio.so
module\tg711.so
module\tg722.so
module\topus.so
module\taufile.so
module\tsndfile.so
{srtp}module_app\taccount.so
module_app\tmenu.so
audio_source\taufile,{source}
audio_player\taufile,{player}
audio_alert\taufile,/dev/null
snd_path\t{dumps}
rtp_ports\t{rtp_low}-{rtp_high}
"""


@dataclass
class Baresip:
    """One running baresip with one outgoing call (see :func:`baresip_call`)."""

    folder: Path
    process: subprocess.Popen[bytes]

    @property
    def log(self) -> str:
        text = (self.folder / "baresip.log").read_text(errors="replace")
        return text.replace("\r", "\n")

    def tail(self, lines: int = 60) -> str:
        kept = [line for line in self.log.splitlines()
                if "bit/s)" not in line and not line.startswith("/")]
        return "\n".join(kept[-lines:])

    def wait_for(self, text: str, timeout: float, *, unless: tuple[str, ...] = ()) -> None:
        """Wait until baresip logs ``text``; give up at once if it logs any of ``unless``."""
        deadline = time.monotonic() + timeout
        while text not in (log := self.log):
            if self.process.poll() is not None and text not in self.log:
                raise AssertionError(f"baresip exited before {text!r}:\n{self.tail()}")
            if failed := [marker for marker in unless if marker in log]:
                raise AssertionError(f"baresip logged {failed[0]!r} before {text!r}:\n"
                                     f"{self.tail()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"baresip never logged {text!r}:\n{self.tail()}")
            time.sleep(0.05)

    def wait_established(self, timeout: float) -> None:
        """Wait for the call to be answered; fail as soon as baresip gives it up."""
        self.wait_for("Call established", timeout,
                      unless=("session closed", "terminated (duration", "call failed"))

    def wait_ended(self, timeout: float) -> None:
        """Wait for the call to end (the source file ran out), then stop baresip so that
        the dump files are closed."""
        self.wait_for("terminated (duration", timeout)
        _stop(self.process)

    @property
    def established(self) -> bool:
        return "Call established" in self.log

    @property
    def encoder(self) -> str | None:
        """What baresip encoded with, e.g. ``"PCMU 8000Hz 1ch"``."""
        found = re.findall(r"Set audio encoder: (.+)", self.log)
        return found[-1].strip() if found else None

    def dump(self, kind: str) -> tuple[Samples, int]:
        """``"enc"``: what baresip sent; ``"dec"``: what it received (first channel)."""
        files = sorted((self.folder / "dumps").glob(f"dump-*-{kind}.wav"))
        assert files, f"baresip wrote no {kind} dump:\n{self.tail()}"
        return read_wav(files[-1])

    def offered_crypto(self) -> tuple[str, str]:
        """(suite, inline key) of the first ``a=crypto`` in the INVITE baresip sent (needs
        ``trace=True``): the key it protects its own RTP with (RFC 4568 §6.1)."""
        log = self.log
        start = log.find("INVITE sip:")
        end = log.find("SIP/2.0 ", start + 1)  # the first response to it
        found = re.search(r"a=crypto:\d+ (\S+) inline:([A-Za-z0-9+/=]+)", log[start:end])
        assert start >= 0 and found, f"no a=crypto in baresip's INVITE:\n{self.tail()}"
        return found.group(1), found.group(2)


@functools.cache
def module_path() -> str:
    """Where this baresip build keeps its modules: the ``module_path`` of the template
    config baresip writes into an empty config folder when it starts."""
    with tempfile.TemporaryDirectory() as folder:
        config = Path(folder) / "config"
        process = subprocess.Popen(["baresip", "-f", folder, "-t", "5"],
                                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            deadline = time.monotonic() + 10
            while not (found := re.search(r"^module_path\s+(\S+)", _read(config), re.M)):
                assert time.monotonic() < deadline, "baresip wrote no template config"
                time.sleep(0.02)
        finally:
            _stop(process)
    return found.group(1)


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


def _rtp_range(span: int = 40) -> tuple[int, int]:
    """An even port range for baresip's RTP, starting at a port that is free right now."""
    low = free_port(both=False) & ~1
    low = min(low, 65534 - span)
    return low, low + span


@contextlib.contextmanager
def baresip_call(folder: Path, target: str | None, source: Path, *, codec: str = "PCMU",
                 tls_ca: Path | None = None, srtp: bool = False, trace: bool = False,
                 max_seconds: int = 40, account: str | None = None) -> Iterator[Baresip]:
    """Start baresip dialling ``target`` (``sip:user@host:port``) and saying ``source``.

    ``tls_ca``: call over TLS (the account's ``transport=tls``), trusting that certificate.
    ``srtp``: SDES-keyed SRTP is mandatory (``mediaenc=srtp-mand``: RTP/SAVP + a=crypto).
    ``account``: the account line up to its parameters (``<sip:bob@registrar>;auth_pass=…;
    regint=60;answermode=auto``) instead of an unregistered one; with ``target`` None
    baresip dials nobody and waits to be called. The process is always stopped on leaving."""
    spec = CODECS[codec]
    folder.mkdir(parents=True, exist_ok=True)
    dumps = folder / "dumps"
    dumps.mkdir(exist_ok=True)
    rtp_low, rtp_high = _rtp_range()
    (folder / "config").write_text(_CONFIG.format(
        tls=f"sip_cafile\t{tls_ca}\n" if tls_ca else "", module_path=module_path(),
        srtp="module\tsrtp.so\n" if srtp else "", source=source, player=folder / "heard.wav",
        dumps=dumps, rtp_low=rtp_low, rtp_high=rtp_high))
    params = [f"audio_codecs={spec.spec}"] + ([] if account else ["regint=0"])
    if srtp:
        params.append("mediaenc=srtp-mand")
    transport = ";transport=tls" if tls_ca else ""
    line = account or f"<sip:tester@127.0.0.1{transport}>"
    (folder / "accounts").write_text(f"{line};{';'.join(params)}\n")
    command = ["baresip", "-f", str(folder), "-t", str(max_seconds)]
    if target is not None:
        command[3:3] = ["-e", f"/dial {target}"]
    if trace:
        command.insert(1, "-s")
    with (folder / "baresip.log").open("wb") as log:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log,
                                   stderr=subprocess.STDOUT, cwd=folder,
                                   start_new_session=True)
    try:
        yield Baresip(folder, process)
    finally:
        _stop(process)


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM (baresip hangs up and closes its files), SIGKILL if it lingers."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=5)


# --- the gateway's log --------------------------------------------------------------------------

_FIELD = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)')


def logged(gateway: Gateway, name: str) -> list[dict[str, str]]:
    """The key=value fields of each ``event=name`` line the gateway logged."""
    return [{key: value.strip('"') for key, value in _FIELD.findall(line)}
            for line in gateway.events(name)]


def call_stats(gateway: Gateway, call_id: str | None = None) -> dict[str, str]:
    """The ``call.media_stats`` fields callgate logs when a call ends (the last call's, or
    ``call_id``'s), waiting a moment for the line."""
    deadline = time.monotonic() + 10
    while True:
        found = [fields for fields in logged(gateway, "call.media_stats")
                 if call_id is None or fields.get("call_id") == call_id]
        if found:
            return found[-1]
        if time.monotonic() > deadline:
            raise AssertionError("callgate logged no call.media_stats:\n"
                                 + "\n".join(gateway.log_lines()[-30:]))
        time.sleep(0.05)
