"""A real pgbouncer (Debian's package) in transaction pool mode in front of the test Postgres, for the suite.

Any database name is passed through to the server (`* =`); clients log in with the server's own user and
password (scram), which pgbouncer also uses for its server connections. Missing pgbouncer: the tests that
need it skip, except in CI (CI set), where they fail - .ci/run installs it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from pgserver import PgServer, _die_with_parent, _free_port, _tail, run_as_unprivileged

STARTUP_TIMEOUT = 15.0
CONFIG = """\
[databases]
* = host={host} port={port}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {listen_port}
unix_socket_dir =
auth_type = scram-sha-256
auth_file = {auth_file}
pool_mode = transaction
max_client_conn = 500
default_pool_size = 20
; what a transaction-mode pooler guarantees: a client's next transaction may run on another server connection
server_round_robin = 1
"""


@dataclass
class Bouncer:
    host: str
    port: int
    server: PgServer

    def url(self, dbname: str) -> str:
        """The URL of a database of the test server, through pgbouncer."""
        direct = urllib.parse.urlsplit(self.server.url(dbname))
        return direct._replace(netloc=direct.netloc.rsplit("@", 1)[0] + f"@{self.host}:{self.port}").geturl()


def pgbouncer_binary() -> str:
    """pgbouncer's path, or skip (fail in CI: there the pooler tests must run, never silently skip)."""
    path = os.environ.get("PGBOUNCER") or shutil.which("pgbouncer") or shutil.which("pgbouncer", path="/usr/sbin")
    if path:
        return path
    why = "no pgbouncer on this machine: apt-get install pgbouncer (Debian's package)"
    if os.environ.get("CI"):
        pytest.fail(f"the pgbouncer tests cannot run in CI: {why}")
    pytest.skip(why)


@contextlib.contextmanager
def pgbouncer_server(server: PgServer, binary: str) -> Iterator[Bouncer]:
    """Yield a running pgbouncer in front of `server`; stopped and its files deleted on exit."""
    work = Path(tempfile.mkdtemp(prefix="pgbouncer-"))
    bouncer = Bouncer("127.0.0.1", _free_port(), server)
    auth_file, config, log = work / "userlist.txt", work / "pgbouncer.ini", work / "pgbouncer.log"
    auth_file.write_text(f'"{server.user}" "{server.password}"\n')
    config.write_text(CONFIG.format(host=server.host, port=server.port, listen_port=bouncer.port,
                                    auth_file=auth_file))
    for path in (work, auth_file, config):
        path.chmod(0o700 if path.is_dir() else 0o600)
    # pgbouncer refuses to run as root: as root, it runs as the embedded server's unprivileged user.
    run_as = run_as_unprivileged([work, auth_file, config])
    proc = None
    try:
        with log.open("ab") as log_f:
            proc = subprocess.Popen([binary, str(config)], stdin=subprocess.DEVNULL, stdout=log_f,
                                    stderr=subprocess.STDOUT, start_new_session=True,
                                    preexec_fn=_die_with_parent, **run_as)
        _wait_until_ready(bouncer, proc, log)
        yield bouncer
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGINT)  # immediate shutdown
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(work, ignore_errors=True)


def _wait_until_ready(bouncer: Bouncer, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"pgbouncer exited with {proc.returncode}:\n{_tail(log)}")
        try:
            psycopg.connect(bouncer.url(bouncer.server.maintenance_db), connect_timeout=2,
                            prepare_threshold=None).close()
            return
        except psycopg.OperationalError as exc:
            if time.monotonic() > deadline:
                raise RuntimeError(f"pgbouncer not ready after {STARTUP_TIMEOUT}s ({exc}):\n{_tail(log)}")
        time.sleep(0.05)


@pytest.fixture(scope="session")
def bouncer(pg):
    """One pgbouncer for the session, in transaction mode in front of the session's Postgres."""
    with pgbouncer_server(pg, pgbouncer_binary()) as running:
        yield running
