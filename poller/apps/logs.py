"""JSON-lines logging for the daemon: one event per line on stderr, UTC timestamps.

Standard :mod:`logging` with an orjson formatter; structured fields travel in
``extra={"fields": {...}}``. Nothing secret is meant to reach a logger; as a second line, the
handlers the logging setups install carry :data:`REDACTION`, a filter that scrubs every record's
message, string fields and traceback by value (:mod:`poller.core.redact`) once
:func:`install_redactor` gave it the resolved credentials' secrets.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import Any

import orjson

from poller.core.redact import Redactor

__all__ = [
    "REDACTION",
    "JsonFormatter",
    "RedactingFilter",
    "install_redactor",
    "log_event",
    "setup_json_logging",
]


class RedactingFilter(logging.Filter):
    """Scrubs each record's message (arguments merged in), the string values of its
    ``fields`` and its traceback text with :attr:`redactor`; never drops a record."""

    def __init__(self, redactor: Redactor | None = None) -> None:
        super().__init__()
        self.redactor = redactor if redactor is not None else Redactor()

    def filter(self, record: logging.LogRecord) -> bool:
        redactor = self.redactor
        if not redactor:
            return True
        message = record.getMessage()
        scrubbed = redactor.scrub(message)
        if scrubbed != message:
            record.msg, record.args = scrubbed, None
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            scrubbed_fields = {
                k: redactor.scrub(v) if isinstance(v, str) else v for k, v in fields.items()
            }
            setattr(record, "fields", scrubbed_fields)  # noqa: B010 - not a LogRecord attribute
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redactor.scrub(record.exc_text)
        return True


#: The process's one redacting filter, on every handler the logging setups install.
REDACTION = RedactingFilter()


def install_redactor(redactor: Redactor | None) -> None:
    """Scrub ``redactor``'s secrets (a ``LiveClient.redactor``) from every log record, as well as
    those installed before (an old secret stays scrubbed after a credentials change). The filter
    is also added to the root logger's handlers that lack it (e.g. set up by an embedding
    application); a handler added later gets it only from a logging setup of this package."""
    if redactor:
        REDACTION.redactor = REDACTION.redactor.with_redactor(redactor)
    for handler in logging.getLogger().handlers:
        if REDACTION not in handler.filters:
            handler.addFilter(REDACTION)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        event: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            event.update(fields)
        if record.exc_text:  # formatted (and scrubbed) by the redacting filter
            event["exception"] = record.exc_text
        elif record.exc_info:
            event["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(event, default=str).decode("utf-8")


def setup_json_logging(verbose: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(REDACTION)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def log_event(logger: logging.Logger, level: int, event: str, **fields: Any) -> None:
    logger.log(level, event, extra={"fields": fields})
