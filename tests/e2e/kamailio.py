"""A Kamailio (Debian ``kamailio``) on loopback as registrar and proxy with digest auth, the
way a carrier or PBX stands in front of callgate: REGISTER is challenged with 401
(``www_challenge``), INVITE with 407 (``proxy_challenge``), MD5 with qop=auth (baresip
1.0's digest knows no SHA-256; callgate's SHA-256 is checked against RFC 7616's example in
the unit tests); users and passwords are in the script (``pv_*_authenticate``); calls to a
registered user are routed over its binding (``lookup("location")``) and record-routed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.e2e.harness import free_port

MODULES = "/usr/lib/x86_64-linux-gnu/kamailio/modules/"

_SCRIPT = """\
#!KAMAILIO
debug=2
log_stderror=yes
children=2
tcp_children=1
auto_aliases=no
listen=udp:127.0.0.1:{port}
mpath="{modules}"
loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "rr.so"
loadmodule "pv.so"
loadmodule "maxfwd.so"
loadmodule "textops.so"
loadmodule "siputils.so"
loadmodule "xlog.so"
loadmodule "usrloc.so"
loadmodule "registrar.so"
loadmodule "auth.so"
modparam("usrloc", "db_mode", 0)

request_route {{
    if (!mf_process_maxfwd_header("10")) {{ sl_send_reply("483", "Too Many Hops"); exit; }}
    if (has_totag()) {{
        if (loose_route()) {{ t_relay(); exit; }}
        if (is_method("ACK")) {{ if (t_check_trans()) {{ t_relay(); }} exit; }}
        sl_send_reply("404", "Not here");
        exit;
    }}
    if (is_method("CANCEL")) {{ if (t_check_trans()) {{ t_relay(); }} exit; }}
    t_check_trans();
    route(PASSWORD);
    if (is_method("REGISTER")) {{
        if (!pv_www_authenticate("$td", "$var(pw)", "0")) {{ www_challenge("$td", "1"); exit; }}
        xlog("L_INFO", "registered $tu contact $ct\\n");
        if (!save("location")) {{ sl_reply_error(); }}
        exit;
    }}
    if (is_method("INVITE")) {{
        if (!pv_proxy_authenticate("$fd", "$var(pw)", "0")) {{
            xlog("L_INFO", "challenged INVITE from $fU\\n");
            proxy_challenge("$fd", "1");
            exit;
        }}
        xlog("L_INFO", "authenticated INVITE from $fU to $rU\\n");
        consume_credentials();
        record_route();
    }}
    if (!lookup("location")) {{ sl_send_reply("404", "Not Found"); exit; }}
    t_relay();
}}

route[PASSWORD] {{
    $var(pw) = "";
{users}
}}
"""


@dataclass
class Kamailio:
    port: int
    folder: Path
    process: subprocess.Popen[bytes]

    @property
    def log(self) -> str:
        return (self.folder / "kamailio.log").read_text(errors="replace")

    def wait_for(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log:
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise AssertionError(f"kamailio never logged {text!r}:\n{self.log[-3000:]}")
            time.sleep(0.05)


@contextlib.contextmanager
def kamailio(folder: Path, users: dict[str, str]) -> Iterator[Kamailio]:
    """Kamailio on a free UDP port of 127.0.0.1 with ``users`` (name -> password)."""
    binary = shutil.which("kamailio")
    if binary is None:
        raise RuntimeError("kamailio is not installed (Debian package kamailio; `make test` "
                           "installs it)")
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port(both=False)
    lines = "\n".join(f'    if ($fU == "{user}") {{ $var(pw) = "{password}"; }}'
                      for user, password in users.items())
    script = folder / "kamailio.cfg"
    script.write_text(_SCRIPT.format(port=port, modules=MODULES, users=lines))
    with (folder / "kamailio.log").open("wb") as log:
        process = subprocess.Popen(
            [binary, "-f", str(script), "-DD", "-E", "-m", "32", "-M", "4",
             "-Y", str(folder), "-P", str(folder / "kamailio.pid")],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    proxy = Kamailio(port, folder, process)
    try:
        _wait_answering(proxy)
        yield proxy
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=5)


def _wait_answering(proxy: Kamailio, timeout: float = 15.0) -> None:
    """Until an OPTIONS gets any answer: the listeners are up."""
    options = (f"OPTIONS sip:127.0.0.1:{proxy.port} SIP/2.0\r\n"
               "Via: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKprobe\r\n"
               "From: <sip:probe@127.0.0.1>;tag=p\r\nTo: <sip:127.0.0.1>\r\n"
               "Call-ID: probe\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 2\r\n"
               "Content-Length: 0\r\n\r\n").encode()
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(0.2)
        while time.monotonic() < deadline:
            if proxy.process.poll() is not None:
                break
            sock.sendto(options.replace(b"127.0.0.1:9", f"127.0.0.1:{sock.getsockname()[1]}"
                                        .encode()), ("127.0.0.1", proxy.port))
            try:
                if sock.recv(65535).startswith(b"SIP/2.0 "):
                    return
            except TimeoutError:
                continue
    raise RuntimeError(f"kamailio did not start:\n{proxy.log[-3000:]}")
