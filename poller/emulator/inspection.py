"""Inspection and control endpoints under ``/_emulator/`` (JSON, no authentication).

These requests are not API requests: they are neither counted nor throttled nor faulted.

=========================  ====================================================================
``GET  /_emulator/stats``   ``{"qps", "live_message_qps", "total": {...}, "accounts": {...},
                            "actions": {...}, "faults_injected": {...}}`` (see below)
``POST /_emulator/reset``   zero statistics and throttle windows; ``{"members": true}`` also
                            rebuilds the configured groups, ``{"nonces": true}`` forgets nonces
``GET  /_emulator/faults``  current rates and seed
``POST /_emulator/faults``  ``{"faults": "500=0.1,hang=0.01", "seed": 7}``, or ``{"faults":
                            {"500": 0.1}}``, or an object of rates; ``{}``, ``""``, an empty body
                            or ``{"faults": ""}`` clear them. With ``seed`` the sequence restarts.
``GET  /_emulator/members`` ``?app_id=&group_id=``: members with ``online``/``join_time``;
                            without parameters: a summary of every group (``data_center`` is
                            set for a group of a current-family app, else ``null``)
``POST /_emulator/members`` ``{"app_id", "group_id", "join": [...], "leave": [...], "online":
                            [...], "offline": [...]}``, applied in that order; works for the
                            groups of both families, and creates the group if needed
``GET  /_emulator/config``  the effective configuration, secrets left out
``GET  /_emulator/clock``   ``{"offset_s": ..., "time": ...}``: the gateway clock's offset from
                            the wall clock and its time (epoch seconds)
``POST /_emulator/clock``   ``{"offset_s": -3600}``: step the gateway's clock (date checks, nonce
                            expiry, the ``Date`` header; membership times are unaffected)
=========================  ====================================================================

Statistics: ``total`` counts every API request; ``accounts[NAME]`` the requests of a known key of
that account; ``actions[ACTION]`` (every known action, zeros until called) the requests naming
that action, with its limit ``qps`` and ``accounts[NAME]``, the block of that (account, action)
pair, the unit the limiter meters (so ``max_admitted_in_any_1s_window`` there never exceeds
``qps``). Each block has ``requests_total``, ``admitted_total``, ``throttled_total``,
``no_response_total``, ``responses_by_code``, ``responses_by_status``,
``max_requests_in_any_1s_window`` and ``max_admitted_in_any_1s_window``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from . import errors
from .faults import FaultRates

if TYPE_CHECKING:
    from .server import Emulator

__all__ = ["add_routes"]

logger = logging.getLogger("poller.emulator")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
#: One path and method: the emulator and the request in, the JSON answer out.
Endpoint = Callable[["Emulator", web.Request], Awaitable[web.StreamResponse]]


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        status=status,
        body=orjson.dumps(data),
        headers={"Content-Type": errors.JSON_CONTENT_TYPE},
    )


async def _body(request: web.Request) -> Any:
    raw = await request.read()
    if not raw.strip():
        return None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise errors.invalid_parameter("body") from None


def _str_list(value: Any, name: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise errors.invalid_parameter(name)
    return value


def _guard(emulator: Emulator, methods: dict[str, Endpoint]) -> Handler:
    """Dispatch on method; turn every rejection into the error envelope."""

    async def handler(request: web.Request) -> web.StreamResponse:
        rid = emulator.new_request_id()
        try:
            method = methods.get(request.method)
            if method is None:
                raise errors.unsupported_method()
            return await method(emulator, request)
        except errors.ApiError as exc:
            return emulator.error_response(request, rid, exc)
        except Exception:
            logger.exception("internal error in %s %s", request.method, request.path)
            return emulator.error_response(request, rid, errors.internal_error())

    return handler


async def _get_stats(emulator: Emulator, request: web.Request) -> web.StreamResponse:
    return _json(emulator.stats.as_dict())


async def _post_reset(emulator: Emulator, request: web.Request) -> web.StreamResponse:
    body = await _body(request)
    if body is not None and not isinstance(body, dict):
        raise errors.invalid_parameter("body")
    options = body or {}
    emulator.stats.reset()
    if options.get("members"):
        emulator.state.reset()
    if options.get("nonces"):
        emulator.nonces.clear()
    return _json({"ok": True})


def _faults_view(emulator: Emulator) -> dict[str, Any]:
    injector = emulator.faults
    rates = injector.rates
    return {"faults": rates.as_dict(), "spec": str(rates), "seed": injector.seed}


async def _get_faults(emulator: Emulator, request: web.Request) -> web.StreamResponse:
    return _json(_faults_view(emulator))


async def _post_faults(emulator: Emulator, request: web.Request) -> web.StreamResponse:
    body = await _body(request)
    seed: Any = None
    spec: Any = body
    if isinstance(body, dict):
        if "faults" in body:
            if set(body) - {"faults", "seed"}:
                raise errors.invalid_parameter("body")
            spec, seed = body["faults"], body.get("seed")
        else:  # an object of rates, optionally with a seed
            spec = {k: v for k, v in body.items() if k != "seed"}
            seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise errors.invalid_parameter("seed")
    try:
        if spec is None or spec == "" or spec == {}:
            rates = FaultRates()
        elif isinstance(spec, str):
            rates = FaultRates.parse(spec)
        elif isinstance(spec, dict):
            rates = FaultRates.from_mapping(spec)
        else:
            raise errors.invalid_parameter("faults")
    except ValueError as exc:
        raise errors.ApiError("InvalidParameter", 400, str(exc)) from None
    emulator.faults.configure(rates, seed)
    return _json(_faults_view(emulator))


async def _get_members(emulator: Emulator, request: web.Request) -> web.StreamResponse:
    state = emulator.state
    app_id = request.query.get("app_id")
    group_id = request.query.get("group_id")
    if app_id is None and group_id is None:
        return _json({"groups": state.summary()})
    if not app_id or not group_id:
        raise errors.missing_parameter("group_id" if app_id else "app_id")
    members = state.snapshot(app_id, group_id)
    online = sum(1 for m in members if m["online"])
    return _json(
        {
            "app_id": app_id,
            "group_id": group_id,
            "total": len(members),
            "online": online,
            "members": members,
        }
    )


async def _post_members(emulator: Emulator, request: web.Request) -> web.StreamResponse:
    state = emulator.state
    body = await _body(request)
    if not isinstance(body, dict):
        raise errors.invalid_parameter("body")
    app_id, group_id = body.get("app_id"), body.get("group_id")
    for name, value in (("app_id", app_id), ("group_id", group_id)):
        if not isinstance(value, str) or not value:
            raise errors.missing_parameter(name)
    assert isinstance(app_id, str) and isinstance(group_id, str)
    changes = {n: _str_list(body.get(n), n) for n in ("join", "online", "offline", "leave")}
    for uid in changes["join"]:
        state.join(app_id, group_id, uid)
    for uid in changes["online"]:
        state.set_online(app_id, group_id, uid)
    for uid in changes["offline"]:
        state.set_offline(app_id, group_id, uid)
    left = sum(state.leave(app_id, group_id, uid) for uid in changes["leave"])
    members = state.snapshot(app_id, group_id)
    return _json(
        {
            "app_id": app_id,
            "group_id": group_id,
            "total": len(members),
            "online": sum(1 for m in members if m["online"]),
            "left": left,
        }
    )


async def _get_config(emulator: Emulator, request: web.Request) -> web.StreamResponse:
    config = emulator.config
    return _json(
        {
            "host": config.host,
            "port": config.port,
            "qps": config.qps,
            "live_message_qps": config.live_message_qps,
            "apps": [{"app_id": a.app_id, "data_center": a.data_center} for a in config.apps],
            "keys": [
                {
                    "access_key_id": k.key_id,
                    "account": k.account,
                    "apps": sorted(k.apps) if k.apps is not None else None,
                    "sts": k.security_token is not None,
                }
                for k in config.keys
            ],
            "groups": [
                {"app_id": g.app_id, "group_id": g.group_id, "size": g.size} for g in config.groups
            ],
            "online_fraction": config.online_fraction,
            "churn_per_s": config.churn_per_s,
            "seed": config.seed,
            "latency_ms": str(config.latency),
            "hang_s": config.hang_s,
            "date_window_s": config.date_window_s,
            "clock_offset_s": emulator.clock.offset_s,
            **_faults_view(emulator),
        }
    )


def _clock_view(emulator: Emulator) -> dict[str, Any]:
    clock = emulator.clock
    return {"offset_s": clock.offset_s, "time": clock.now()}


async def _get_clock(emulator: Emulator, request: web.Request) -> web.StreamResponse:
    return _json(_clock_view(emulator))


async def _post_clock(emulator: Emulator, request: web.Request) -> web.StreamResponse:
    body = await _body(request)
    if not isinstance(body, dict) or set(body) != {"offset_s"}:
        raise errors.invalid_parameter("body")
    offset = body["offset_s"]
    if isinstance(offset, bool) or not isinstance(offset, int | float):
        raise errors.invalid_parameter("offset_s")
    if not math.isfinite(offset):
        raise errors.invalid_parameter("offset_s")
    emulator.clock.offset_s = float(offset)
    return _json(_clock_view(emulator))


_ROUTES: dict[str, dict[str, Endpoint]] = {
    "/_emulator/stats": {"GET": _get_stats},
    "/_emulator/reset": {"POST": _post_reset},
    "/_emulator/faults": {"GET": _get_faults, "POST": _post_faults},
    "/_emulator/members": {"GET": _get_members, "POST": _post_members},
    "/_emulator/config": {"GET": _get_config},
    "/_emulator/clock": {"GET": _get_clock, "POST": _post_clock},
}


def add_routes(app: web.Application, emulator: Emulator) -> None:
    """Route every path of :data:`_ROUTES` to ``emulator``, any method (see :func:`_guard`)."""
    for path, methods in _ROUTES.items():
        app.router.add_route("*", path, _guard(emulator, methods))
