"""The emulator's socket-level pieces: TLS, listening, and hanging up on purpose.

:func:`listen` starts an aiohttp application on ``config.host``:``config.port`` (HTTPS when a
certificate is configured) for :class:`.server.EmulatorServer`; :func:`abort` drops a request's
connection without an answer (a FIN, or an RST through ``SO_LINGER`` 0) for the ``hang``,
``reset_before`` and ``reset_after`` faults, which then raise :class:`NoResponse`.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import struct

from aiohttp import web

from .config import EmulatorConfig

__all__ = ["NoResponse", "abort", "listen", "tls_context"]

_LINGER_RST = struct.pack("ii", 1, 0)


class NoResponse(Exception):
    """The connection was aborted or hung up on purpose: nothing is sent."""


def abort(request: web.BaseRequest, rst: bool) -> None:
    """Close the request's connection: gracefully, or with an RST when ``rst``."""
    transport = request.transport
    if transport is None:
        return
    if rst:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
        transport.abort()
    else:
        transport.close()


def tls_context(config: EmulatorConfig) -> ssl.SSLContext | None:
    """The server-side TLS context for ``config.tls_cert``/``tls_key``; ``None`` for HTTP."""
    if config.tls_cert is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(config.tls_cert, config.tls_key)
    return context


async def listen(app: web.Application, config: EmulatorConfig) -> web.AppRunner:
    """Set ``app`` up and listen on ``config.host``:``config.port``; the caller cleans up the
    runner it gets back. Nothing is left running if listening fails."""
    ssl_context = tls_context(config)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=5.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, config.host, config.port, backlog=1024, ssl_context=ssl_context)
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner
