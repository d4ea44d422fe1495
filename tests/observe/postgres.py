"""A throwaway PostgreSQL server for the tests: Debian's ``postgresql`` binaries, a cluster of
its own in a temporary folder, on a free port, stopped and deleted afterwards.

PostgreSQL refuses to run as root; as root the cluster is made and run by the ``postgres``
system user (``runuser``), which owns the folder.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bench.common import free_port


def pg_bin() -> Path | None:
    """The folder of ``initdb``/``pg_ctl``: on PATH, or Debian's versioned folder."""
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    return Path(versions[-1]).parent if versions else None


@dataclass
class Postgres:
    folder: Path
    port: int
    bin: Path
    user: str | None  # the system user running it (None: this process's)

    @property
    def url(self) -> str:
        return f"postgresql://callgate@127.0.0.1:{self.port}/callgate"

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = [str(self.bin / args[0]), *args[1:]]
        if self.user is not None:
            command = ["runuser", "-u", self.user, "--", *command]
        return subprocess.run(command, capture_output=True, text=True, timeout=60, check=check,
                              cwd=self.folder)

    def start(self) -> None:
        self.run("pg_ctl", "-D", str(self.folder / "data"), "-l", str(self.folder / "log"),
                 "-o", f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1",
                 "-w", "-t", "30", "start")

    def stop(self, mode: str = "fast") -> None:
        self.run("pg_ctl", "-D", str(self.folder / "data"), "-m", mode, "-w", "-t", "30",
                 "stop", check=False)


@contextlib.contextmanager
def postgres_server() -> Iterator[Postgres]:
    """A running server with an empty database ``callgate`` that user ``callgate`` owns
    (trust authentication on loopback)."""
    binaries = pg_bin()
    if binaries is None:
        raise RuntimeError("PostgreSQL is not installed (Debian package postgresql)")
    user = "postgres" if os.geteuid() == 0 else None
    folder = Path(tempfile.mkdtemp(prefix="callgate-pg-"))
    if user is not None:
        entry = pwd.getpwnam(user)
        os.chown(folder, entry.pw_uid, entry.pw_gid)
    server = Postgres(folder, free_port(both=False), binaries, user)
    try:
        server.run("initdb", "-D", str(folder / "data"), "-U", "postgres", "-A", "trust",
                   "--no-sync", "-E", "UTF8")
        server.start()
        server.run("psql", "-h", "127.0.0.1", "-p", str(server.port), "-U", "postgres", "-c",
                   "CREATE USER callgate")
        server.run("createdb", "-h", "127.0.0.1", "-p", str(server.port), "-U", "postgres",
                   "-O", "callgate", "callgate")
        yield server
    finally:
        server.stop("immediate")
        shutil.rmtree(folder, ignore_errors=True)
