"""`python -m agent ui`: a local web UI for time-travel debugging on the user's own database.

`serve()` checks where it may listen, opens the database, and runs the Starlette app (agent.ui.app) on uvicorn.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Callable

from agent.errors import BadInput

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765


def is_local(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_listen(host: str, token: str | None) -> None:
    """Refuse to serve the database beyond this machine without a token."""
    if not is_local(host) and not token:
        raise BadInput(f"--host {host} would let other machines reach your database: add --token SECRET "
                       "(every request must then carry it), or keep the default --host 127.0.0.1")


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound before anything else starts, so a taken port is one clear error."""
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as exc:
        sock.close()
        raise BadInput(f"cannot listen on {host}:{port} ({exc.strerror}): choose another --port, "
                       "or --port 0 for any free one") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket, host: str, token: str | None) -> str:
    port = sock.getsockname()[1]
    shown = f"[{host.strip('[]')}]" if ":" in host.strip("[]") else host
    return f"http://{shown}:{port}/" + (f"?token={token}" if token else "")


def serve(db: str | None, *, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, write: bool = False,
          token: str | None = None, open_browser: bool = True, announce: Callable[[str], None] | None = None) -> None:
    """Serve the UI until Ctrl+C. Read-only unless `write`; `announce` gets the address to open."""
    check_listen(host, token)
    sock = bind(host, port)
    try:
        asyncio.run(_serve(db, sock, host, write, token, open_browser, announce))
    finally:
        sock.close()


async def _serve(db, sock, host, write, token, open_browser, announce) -> None:
    import uvicorn

    from agent.api import AsyncAgent
    from agent.ui.app import create_app

    agent = AsyncAgent(db=db, create=write)
    if write:  # its runs need the configured model: refused now, in one line, not in every page that runs
        agent._core.check_model()
    async with agent:
        from agent.__main__ import _redact  # the CLI's own: a URL with its password masked

        label = _redact(agent.settings.db)
        app = create_app(agent, write=write, token=token, local=is_local(host), db_label=label)
        url = url_of(sock, host, token)
        mode = "read-write" if write else "read-only (start with --write to replay, fork, branch, resume)"
        (announce or _print)(f"agent ui on {label}, {mode}: {url}")
        if open_browser:
            import webbrowser

            webbrowser.open(url)
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on",
                                timeout_graceful_shutdown=3)
        await uvicorn.Server(config).serve(sockets=[sock])


def _print(line: str) -> None:
    print(line, flush=True)  # at once, also when stdout is a pipe: whoever started us waits for the address
