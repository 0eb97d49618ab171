"""Test helpers for services that embed poller (kept here for existing imports).

The emulator's process controller lives in :mod:`poller.emulator.process`.
"""

from __future__ import annotations

from poller.emulator.process import EmulatorProcess

__all__ = ["EmulatorProcess"]
