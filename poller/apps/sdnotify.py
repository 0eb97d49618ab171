"""systemd notification protocol (``Type=notify``), a few lines of our own.

One datagram per message to ``$NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract
namespace). Without the variable every call is a no-op, so the daemon runs the same under
systemd, in a container or by hand. Watchdog pings are sent from the event loop, so a blocked
loop stops them and systemd restarts the service.
"""

from __future__ import annotations

import os
import socket

from poller.core.clock import Clock

__all__ = ["notify", "reloading_message", "watchdog_interval_s"]


def notify(message: str) -> bool:
    """Send ``message`` (e.g. ``"READY=1"``); ``False`` when not under systemd or on error."""
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message.encode("utf-8"))
    except OSError:
        return False
    return True


def reloading_message(clock: Clock) -> str:
    """``RELOADING=1`` with the ``MONOTONIC_USEC`` that ``Type=notify-reload`` requires
    (``CLOCK_MONOTONIC``, which the real clock's ``monotonic()`` reads on Linux)."""
    usec = int(clock.monotonic() * 1_000_000)
    return f"RELOADING=1\nMONOTONIC_USEC={usec}"


def watchdog_interval_s() -> float | None:
    """Half of ``$WATCHDOG_USEC`` when the watchdog is enabled for this process, else ``None``."""
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) <= 0:
        return None
    if pid and pid.isdigit() and int(pid) != os.getpid():
        return None
    return int(usec) / 2_000_000
