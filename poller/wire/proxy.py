"""Which HTTP proxy applies to the API endpoint: the one rule, shared by the builtin transport's
refusal and ``poller check-config``.

It is the rule of the aiohttp transport (an ``aiohttp.ClientSession(trust_env=True)``), which
asks the standard library: the proxy is ``<scheme>_proxy`` for the endpoint's scheme, that is
``HTTPS_PROXY`` for ``protocol = "https"`` and ``HTTP_PROXY`` for ``"http"`` (the lower-case name
wins when both are set; an empty value unsets; ``HTTP_PROXY`` is ignored when ``REQUEST_METHOD``
is set, as in a CGI script). ``NO_PROXY`` (either case) is ``*`` or a comma-separated list of host
names, each matching that host and its subdomains (a leading dot is ignored); it is matched
against the endpoint's host, without its port. ``ALL_PROXY`` is not read, and a proxy whose own
URL is ``https://`` is ignored (aiohttp does not support them). On macOS and Windows the system
proxy settings count too when ``environ`` is ``os.environ``, as they do for aiohttp.

Proxy URLs may hold credentials: show them only through :func:`poller.config.mask_url`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from poller.config import ApiConfig, mask_url
from poller.core.errors import ConfigError

__all__ = ["check_builtin_transport", "describe_proxy", "proxy_for"]

#: Proxy URL schemes aiohttp refuses (it warns and goes direct).
_IGNORED_PROXY_SCHEMES = ("https", "wss")


def _environment_proxies(environ: Mapping[str, str]) -> dict[str, str]:
    """``urllib.request.getproxies_environment()``, over ``environ``."""
    proxies: dict[str, str] = {}
    for name, value in environ.items():
        if value and name[-6:].lower() == "_proxy":
            proxies[name[:-6].lower()] = value
    if "REQUEST_METHOD" in environ:
        proxies.pop("http", None)
    for name, value in environ.items():  # all lower case: wins over any other spelling
        if name[-6:] == "_proxy":
            if value:
                proxies[name[:-6].lower()] = value
            else:
                proxies.pop(name[:-6].lower(), None)
    return proxies


def _no_proxy_matches(host: str, no_proxy: str | None) -> bool:
    """``urllib.request.proxy_bypass_environment(host)`` for a given ``no_proxy`` value (``host``
    has no port here, as aiohttp passes it)."""
    if no_proxy is None:
        return False
    if no_proxy == "*":
        return True
    host = host.lower()
    for name in no_proxy.split(","):
        name = name.strip().lstrip(".").lower()
        if name and (host == name or host.endswith("." + name)):
            return True
    return False


def proxy_for(api: ApiConfig, environ: Mapping[str, str] = os.environ) -> str | None:
    """The proxy URL (credentials included: mask before showing it) through which the aiohttp
    transport would reach ``api.base_url``, or ``None`` when it would connect directly."""
    if environ is os.environ:
        import urllib.request  # only when a client starts: keeps `import poller` light

        proxies = urllib.request.getproxies()
        bypass = bool(urllib.request.proxy_bypass(api.host))
    else:
        proxies = _environment_proxies(environ)
        bypass = _no_proxy_matches(api.host, proxies.get("no"))
    url = proxies.get(api.protocol)
    if not url or bypass:
        return None
    scheme = url.partition("://")[0].lower() if "://" in url else ""
    return None if scheme in _IGNORED_PROXY_SCHEMES else url


def _proxy_variable(api: ApiConfig) -> str:
    return f"{api.protocol.upper()}_PROXY or {api.protocol}_proxy"


def check_builtin_transport(api: ApiConfig, environ: Mapping[str, str] = os.environ) -> None:
    """Raise :class:`ConfigError` (key ``api.transport``) when ``api.transport`` is
    ``"builtin"`` and a proxy applies to the endpoint: that transport always connects directly,
    which behind a proxy fails or, worse, bypasses it."""
    if api.transport != "builtin":
        return
    proxy = proxy_for(api, environ)
    if proxy is None:
        return
    raise ConfigError(
        f'transport = "builtin" cannot use the proxy {mask_url(proxy)} that '
        f'{_proxy_variable(api)} sets for {api.base_url}: use transport = "aiohttp", or add '
        f"{api.host} to NO_PROXY",
        key="api.transport",
    )


def describe_proxy(api: ApiConfig, environ: Mapping[str, str] = os.environ) -> str:
    """One line for ``poller check-config``: which proxy applies (masked), or that none does,
    and whether the builtin transport would refuse to start."""
    proxy = proxy_for(api, environ)
    if proxy is None:
        return f"no proxy applies to {api.base_url} (direct connection)"
    line = f"proxy for {api.base_url}: {mask_url(proxy)} (from {_proxy_variable(api)})"
    if api.transport == "builtin":
        line += '; transport = "builtin" would REFUSE to start (it cannot use a proxy)'
    return line
