"""Scrubbing secrets by value: whatever text surrounds them, wherever they appear.

A :class:`Redactor` holds the secret strings of one credential (the AccessKeySecret, the STS
SecurityToken) and replaces every occurrence of each, in the spellings a server or a library
may echo them in (as they are; URL-encoded with ``quote`` or ``quote_plus``, or twice as in a
V1 string-to-sign, in either hex case; JSON-escaped), by ``****``. Values shorter than
:data:`MIN_SECRET_LEN` are ignored: replacing them would mangle ordinary text and they protect
nothing.

Scrubbing costs one ``in`` test per spelling when there is nothing to replace, so it runs on
every error message and log line.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Final
from urllib.parse import quote, quote_plus

__all__ = ["MASK", "MIN_SECRET_LEN", "Redactor"]

#: What a secret is replaced by.
MASK: Final = "****"
#: Shorter values are not scrubbed (they would match ordinary words).
MIN_SECRET_LEN: Final = 6

_PERCENT_HEX = re.compile(r"%[0-9A-F]{2}")


def _spellings(value: str) -> set[str]:
    """``value`` as it is and as it may be echoed: URL-encoded, lower-case hex, JSON-escaped."""
    once = quote(value, safe="")
    # Twice: a V1 string-to-sign percent-encodes the already encoded query.
    forms = {value, once, quote_plus(value, safe=""), quote(once, safe="")}
    forms |= {_PERCENT_HEX.sub(lambda m: m.group(0).lower(), f) for f in list(forms)}
    escaped = json.dumps(value, ensure_ascii=False)[1:-1]
    forms |= {escaped, escaped.replace("/", "\\/"), json.dumps(value)[1:-1]}
    return forms


def _longest_first(forms: set[str]) -> tuple[str, ...]:
    # A spelling that contains another is replaced whole, before the shorter one could cut it.
    return tuple(sorted(forms, key=lambda f: (-len(f), f)))


class Redactor:
    """Replaces every spelling of its secrets by ``****`` (see the module docstring)."""

    __slots__ = ("_forms",)

    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        forms: set[str] = set()
        for secret in secrets:
            if secret and len(secret) >= MIN_SECRET_LEN:
                forms |= _spellings(secret)
        self._forms = _longest_first(forms)

    def __repr__(self) -> str:
        return f"<Redactor {len(self._forms)} spellings>"

    def __bool__(self) -> bool:
        return bool(self._forms)

    def with_secrets(self, *secrets: str | None) -> Redactor:
        """A redactor for these secrets as well as this one's (e.g. one request's signature)."""
        return self.with_redactor(Redactor(secrets))

    def with_redactor(self, other: Redactor) -> Redactor:
        """A redactor for the secrets of both."""
        if not other._forms or other._forms == self._forms:
            return self
        if not self._forms:
            return other
        merged = Redactor()
        merged._forms = _longest_first({*self._forms, *other._forms})
        return merged

    def scrub(self, text: str) -> str:
        """``text`` with every spelling of every secret replaced by ``****``."""
        for form in self._forms:
            if form in text:
                text = text.replace(form, MASK)
        return text
