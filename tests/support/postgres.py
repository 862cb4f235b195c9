"""A throwaway PostgreSQL server for tests: Debian's ``initdb`` + ``postgres`` in a temp dir on a free port.

The binaries are found at run time under ``/usr/lib/postgresql/<version>/bin`` (the ``postgresql`` package; no
download). The data dir and the unix socket live in a fresh temp dir; the server listens on 127.0.0.1 on a free
port with ``trust`` auth (nothing else can reach it). PostgreSQL refuses to run as root, so under root (CI
containers) the server runs as the ``postgres`` system user the package creates. ``fsync=off`` and friends: the
data is thrown away, durability buys nothing here.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

#: Set (CI does, in ``.ci/run``) to turn "no PostgreSQL here" from a skip into a failure.
REQUIRE_ENV = "SPANPRISM_REQUIRE_POSTGRES"


def find_bin_dir() -> Path | None:
    """The newest ``/usr/lib/postgresql/*/bin`` holding ``initdb`` and ``postgres``, or None."""
    root = Path("/usr/lib/postgresql")
    candidates = [d / "bin" for d in root.glob("*") if (d / "bin" / "initdb").exists() and (d / "bin" / "postgres")]
    candidates.sort(key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)
    return candidates[-1] if candidates else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_user_prefix() -> tuple[list[str], int | None]:
    """The command prefix that drops root to ``postgres`` (and its uid for chown); nothing when not root."""
    if os.geteuid() != 0:
        return [], None
    user = pwd.getpwnam("postgres")
    return ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--init-groups"], user.pw_uid


@dataclass
class PostgresServer:
    """One running server; :meth:`url` hands out a fresh database on it (one per test that asks)."""

    bin_dir: Path
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="spanprism-pg-")))
    port: int = field(default_factory=_free_port)
    process: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 30.0) -> PostgresServer:
        prefix, uid = _as_user_prefix()
        data, sock = self.root / "data", self.root / "sock"
        sock.mkdir()
        if uid is not None:
            for path in (self.root, sock):
                os.chown(path, uid, -1)
        subprocess.run([*prefix, str(self.bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust",
                        "-E", "UTF8", "--no-sync"], check=True, capture_output=True)  # fmt: skip
        options = ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
                   "-c", "max_connections=200", "-c", "shared_buffers=32MB"]  # fmt: skip
        log = open(self.root / "server.log", "wb")  # noqa: SIM115  (the server writes it while it runs)
        self.process = subprocess.Popen(
            [*prefix, str(self.bin_dir / "postgres"), "-D", str(data), "-h", "127.0.0.1", "-p", str(self.port),
             "-k", str(sock), *options], stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
        self._wait_ready(timeout_s)
        return self

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                psycopg.connect(self.admin_dsn(), connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                if self.process is not None and self.process.poll() is not None:
                    raise RuntimeError(f"postgres exited: {(self.root / 'server.log').read_text()[-2000:]}") from None
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def admin_dsn(self, dbname: str = "postgres") -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname={dbname}"

    def create_database(self) -> str:
        """A new empty database; returns its name."""
        name = "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(self.admin_dsn(), autocommit=True) as con:
            con.execute(f'CREATE DATABASE "{name}"')
        return name

    def url(self, dbname: str | None = None) -> str:
        """A SQLAlchemy URL (``postgresql+psycopg://``) of ``dbname`` (a fresh database when None)."""
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{dbname or self.create_database()}"

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # "fast" shutdown: ends open sessions instead of awaiting them
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.root, ignore_errors=True)
