"""The daemon answers too: ``GET /v1/presence`` on ``[query] listen``.

::

    GET /v1/presence?app_id=A&group_id=G&uid=u1&uid=u2[&api=ACTION][&fresh=1]

* ``app_id`` (required), ``group_id`` (required for a group action, absent for the app-wide
  CheckLiveMessageUsersOnline), ``api`` (the presence action; default BatchGetOnlineUsers) name
  one of the daemon's ``[[targets]]``; any other target is a 404 naming it.
* ``uid``, repeatable: 1 to ``[query] max_uids`` distinct user IDs, answered once each in the
  order first asked. An ID that cannot be sent gets an ``InvalidUserId`` error record (not a
  400).
* By default the answer comes from the daemon's last known state (its change tracker, or in a
  sharded fleet the fleet's shared state in Redis, so every member answers for every UID): a
  presence-like record per UID with ``polled_at`` (the last poll that found the state; null
  after a restart until the UID is polled again), ``age_ms`` (now minus ``polled_at``) and
  ``sweep``; a UID the daemon knows nothing of gets a ``NotPolled`` error record. Nothing is
  sent to the API.
* With ``fresh=1`` (or ``true``) the UIDs are asked through one coalesced
  :class:`~poller.engine.lookup.Lookup` per target (made at the first such request, reused,
  its questions counted in ``poller_lookup_*{action}``): the lookup's records, ``age_ms``
  included. Too many questions waiting: 503 with ``Retry-After: 1``; no answer within
  ``[lookups] timeout_s``: 504.

The answer: ``{"api", "app_id", "group_id", "fresh", "records": [...]}``. Errors are JSON
too: ``{"error": "..."}``, with ``"parameter"`` naming the query parameter a 400 is about
(unknown or repeated parameters, a missing ``app_id``/``uid``, a ``group_id`` that is missing or
not allowed, an unknown ``api``, too many UIDs, a ``fresh`` other than 0/1/true/false).

Security: with ``[query] token_env`` every request (any path) needs ``Authorization: Bearer
<token>``, compared in constant time; otherwise 401 with ``WWW-Authenticate: Bearer``. The
token is never logged, echoed or put in a ``repr``. A listener on a non-loopback address
requires a token (the config refuses it otherwise). Every answered request is counted in
``poller_query_requests_total{status}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import orjson
from aiohttp import hdrs, web
from aiohttp.typedefs import Handler
from multidict import MultiMapping

from poller.config import LookupsConfig, PollerConfig
from poller.core.apis import API_SPECS, LEGACY_API
from poller.core.batching import invalid_reason
from poller.core.changes import LastKnown
from poller.core.clock import Clock, epoch_ms
from poller.core.records import INVALID_USER_ID, Target, TargetKey
from poller.engine.lookup import Lookup, LookupOverloaded
from poller.engine.poller import Poller

from .changes import KnownStates, StateUnavailable
from .logs import log_event
from .metrics import Metrics, start_site

__all__ = ["NOT_POLLED", "PATH", "BadRequest", "PresenceQuery", "QueryServer", "parse_query"]

log = logging.getLogger("poller.query")

#: Where the endpoint answers.
PATH: Final = "/v1/presence"
#: The error code of a UID the daemon has no known state of.
NOT_POLLED: Final = "NotPolled"
#: The query parameters the endpoint reads; any other is a 400.
PARAMETERS: Final = ("app_id", "group_id", "uid", "api", "fresh")
_SINGLE: Final = ("app_id", "group_id", "api", "fresh")
_FRESH: Final = {"0": False, "false": False, "1": True, "true": True}
#: The request line's room beyond its UIDs (aiohttp's default limit).
_LINE_SLACK: Final = 8190
#: How long closing waits for requests still being answered (s).
SHUTDOWN_TIMEOUT_S: Final = 2.0
_JSON: Final = "application/json"


def _lookup_settings(config: LookupsConfig) -> LookupsConfig:
    """What a lookup handle is made with (``min_share`` is the poller's, applied live)."""
    return dataclasses.replace(config, min_share=0.0)


class BadRequest(Exception):
    """A query the endpoint cannot answer (400), about one ``parameter``."""

    def __init__(self, message: str, parameter: str) -> None:
        super().__init__(message)
        self.message = message
        self.parameter = parameter


@dataclass(frozen=True, slots=True)
class PresenceQuery:
    """One parsed ``GET /v1/presence``: the target's identity, distinct UIDs, fresh or not."""

    api: str
    app_id: str
    group_id: str | None
    uids: tuple[str, ...]
    fresh: bool

    @property
    def key(self) -> TargetKey:
        return (self.api, self.app_id, self.group_id)


def parse_query(query: MultiMapping[str], *, max_uids: int) -> PresenceQuery:
    """The query of a request; :class:`BadRequest` naming the parameter at fault."""
    for name in query:
        if name not in PARAMETERS:
            raise BadRequest(
                f"unknown parameter {name!r}; the parameters are {', '.join(PARAMETERS)}", name
            )
    for name in _SINGLE:
        if len(query.getall(name, ())) > 1:
            raise BadRequest(f"{name} given more than once", name)
    app_id = query.get("app_id", "")
    if not app_id:
        raise BadRequest("required: the app's ID", "app_id")
    api = query.get("api", LEGACY_API)
    spec = API_SPECS.get(api)
    if spec is None:
        raise BadRequest(f"unknown API {api!r}; one of {', '.join(sorted(API_SPECS))}", "api")
    group_id = query.get("group_id")
    if spec.app_wide:
        if group_id is not None:
            raise BadRequest(f"{api} asks about a whole app: no group_id", "group_id")
    elif not group_id:
        raise BadRequest(f"required for {api}: the message group's ID", "group_id")
    fresh = _FRESH.get(query.get("fresh", "0").lower())
    if fresh is None:
        raise BadRequest("must be 0, 1, true or false", "fresh")
    uids = tuple(dict.fromkeys(query.getall("uid", ())))
    if not uids:
        raise BadRequest("at least one uid is required", "uid")
    if len(uids) > max_uids:
        raise BadRequest(
            f"{len(uids)} distinct user IDs; at most {max_uids} per request ([query] max_uids)",
            "uid",
        )
    return PresenceQuery(api, app_id, group_id, uids, fresh)


def _printable(value: Any) -> Any:
    """``value`` with every string encodable as JSON (lone surrogates as ``\\udcXX`` text)."""
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, Mapping):
        return {_printable(k): _printable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_printable(v) for v in value]
    return value


def _json(
    payload: Mapping[str, Any], status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    try:
        body = orjson.dumps(payload)
    except orjson.JSONEncodeError:  # a user ID or parameter name that is not valid UTF-8
        body = orjson.dumps(_printable(payload))
    return web.Response(body=body, status=status, content_type=_JSON, headers=headers)


def _target_text(key: TargetKey) -> str:
    api, app_id, group_id = key
    group = "" if group_id is None else f", group_id={group_id!r}"
    return f"api={api!r}, app_id={app_id!r}{group}"


@dataclass(slots=True, eq=False)
class _Handle:
    """The lookup of one target and the requests using it now."""

    lookup: Lookup
    target: Target
    active: int = 0
    retired: bool = False


class QueryServer:
    """An aiohttp app answering ``GET /v1/presence`` on ``[query] listen``; see the module doc.

    ``states`` is where the last known states are read (the daemon's :class:`Changes`);
    ``token`` the bearer token requests must carry (``None``: none); ``clock`` the clock of
    ``age_ms`` (default: the poller's, corrected by the server's ``Date``, as ``polled_at``).
    """

    def __init__(
        self,
        config: PollerConfig,
        poller: Poller,
        states: KnownStates,
        metrics: Metrics,
        *,
        token: str | None = None,
        clock: Clock | None = None,
    ) -> None:
        listen = config.query.listen
        host, _, port = listen.rpartition(":")
        self._host = host.strip("[]")
        self._port = int(port) if port else 0
        self._poller = poller
        self._states = states
        self._metrics = metrics
        self._clock = clock or poller.clock
        token = (token or "").strip()  # a variable read from a file may end with a newline
        self._token = token.encode("utf-8", "surrogatepass") if token else None
        self._handles: dict[TargetKey, _Handle] = {}
        self._retired: set[_Handle] = set()
        self._background: set[asyncio.Task[None]] = set()
        self._runner: web.AppRunner | None = None
        self._closing = False
        self._apply(config)
        # The request line holds every UID, percent-encoded at worst.
        self._max_line = _LINE_SLACK + self._max_uids * (len("&uid=") + 3 * self._max_uid_bytes)
        self.port = self._port

    def __repr__(self) -> str:
        auth = "bearer token" if self._token is not None else "no token"
        return f"<QueryServer {self._host}:{self.port} {auth} targets={len(self._targets)}>"

    def _apply(self, config: PollerConfig) -> None:
        self._targets = {t.target.key: t.target for t in config.targets}
        self._max_uids = config.query.max_uids
        self._max_uid_bytes = config.sweep.max_uid_bytes
        self._lookups_config: LookupsConfig = config.lookups

    # -- lifecycle ------------------------------------------------------------------------

    def make_app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware])
        app.router.add_get(PATH, self._presence, allow_head=False)
        return app

    async def start(self) -> None:
        """Listen (``OSError`` when the address cannot be bound)."""
        runner = web.AppRunner(
            self.make_app(),
            access_log=None,
            shutdown_timeout=SHUTDOWN_TIMEOUT_S,
            max_line_size=self._max_line,
        )
        self.port = await start_site(runner, self._host, self._port)
        self._runner = runner

    @property
    def url(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self.port}{PATH}"

    async def close(self) -> None:
        """Stop: fresh questions still waiting are answered ``Cancelled`` (their lookups
        close), then the listener closes."""
        self._closing = True
        handles = [*self._handles.values(), *self._retired]
        self._handles, self._retired = {}, set()
        for handle in handles:
            await handle.lookup.aclose()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        for task in list(self._background):
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def reconfigure(self, config: PollerConfig) -> None:
        """A reload: its targets, ``max_uids`` and ``[lookups]`` apply to the next requests (a
        lookup whose settings or target changed is replaced once its requests are answered);
        ``listen`` and ``token_env`` apply after a restart."""
        old = _lookup_settings(self._lookups_config), self._max_uid_bytes
        self._apply(config)
        # The request line's size limit was set at start: more UIDs may not fit until a restart.
        fits = (self._max_line - _LINE_SLACK) // (len("&uid=") + 3 * self._max_uid_bytes)
        if self._max_uids > fits:
            log_event(
                log,
                logging.WARNING,
                "a larger [query] max_uids applies after a restart",
                max_uids=fits,
            )
            self._max_uids = fits
        changed = old != (_lookup_settings(self._lookups_config), self._max_uid_bytes)
        for key, handle in list(self._handles.items()):
            target = self._targets.get(key)
            if changed or target is None or target.data_center != handle.target.data_center:
                del self._handles[key]
                self._retire(handle)

    def _retire(self, handle: _Handle) -> None:
        handle.retired = True
        if self._closing:
            return  # close() closes every lookup
        if handle.active:
            self._retired.add(handle)  # closed by its last request
            return
        self._retired.discard(handle)
        task = asyncio.create_task(handle.lookup.aclose(), name="poller-query-lookup-close")
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- requests -------------------------------------------------------------------------

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        status = 500
        try:
            if self._token is not None and not self._authorized(request):
                response: web.StreamResponse = _json(
                    {"error": "this endpoint needs an 'Authorization: Bearer <token>' header"},
                    status=401,
                    headers={hdrs.WWW_AUTHENTICATE: "Bearer"},
                )
            else:
                try:
                    response = await handler(request)
                except web.HTTPException as exc:  # 404 and 405 of the router, as JSON
                    allow = exc.headers.get(hdrs.ALLOW)
                    response = _json(
                        {"error": exc.reason},
                        status=exc.status,
                        headers={hdrs.ALLOW: allow} if allow is not None else None,
                    )
            status = response.status
            return response
        finally:
            self._metrics.query_requests.labels(str(status)).inc()

    def _authorized(self, request: web.Request) -> bool:
        assert self._token is not None
        scheme, _, given = request.headers.get(hdrs.AUTHORIZATION, "").partition(" ")
        if scheme.lower() != "bearer":
            given = ""
        return hmac.compare_digest(given.strip().encode("utf-8", "surrogatepass"), self._token)

    async def _presence(self, request: web.Request) -> web.Response:
        try:
            query = parse_query(request.query, max_uids=self._max_uids)
        except BadRequest as exc:
            return _json({"error": exc.message, "parameter": exc.parameter}, status=400)
        target = self._targets.get(query.key)
        if target is None:
            return _json(
                {
                    "error": f"not a target of this daemon: {_target_text(query.key)}",
                    "api": query.api,
                    "app_id": query.app_id,
                    "group_id": query.group_id,
                },
                status=404,
            )
        if query.fresh:
            return await self._fresh(query, target)
        return await self._from_state(query, target)

    def _answer(self, query: PresenceQuery, records: list[Any]) -> web.Response:
        return _json(
            {
                "api": query.api,
                "app_id": query.app_id,
                "group_id": query.group_id,
                "fresh": query.fresh,
                "records": records,
            }
        )

    async def _from_state(self, query: PresenceQuery, target: Target) -> web.Response:
        invalid = {uid: invalid_reason(uid, self._max_uid_bytes) for uid in query.uids}
        valid = [uid for uid, reason in invalid.items() if reason is None]
        try:
            found = await self._states.last_known(target.key, valid) if valid else []
        except StateUnavailable as exc:
            return _json({"error": str(exc)}, status=503, headers={hdrs.RETRY_AFTER: "1"})
        known = dict(zip(valid, found, strict=True))
        now = epoch_ms(self._clock)
        records = []
        for uid in query.uids:
            reason = invalid[uid]
            if reason is not None:
                records.append(_error(target, uid, INVALID_USER_ID, reason))
            else:
                records.append(_state_record(target, uid, known[uid], now))
        return self._answer(query, records)

    async def _fresh(self, query: PresenceQuery, target: Target) -> web.Response:
        if self._closing:
            return _json(
                {"error": "the daemon is stopping"}, status=503, headers={hdrs.RETRY_AFTER: "1"}
            )
        handle = self._handles.get(target.key)
        if handle is None:
            settings = self._lookups_config  # this server's: a reload may not have reached
            lookup = self._poller.lookup(  # the poller yet
                target,
                linger_ms=settings.linger_ms,
                cache_ttl_s=settings.cache_ttl_s,
                timeout_s=settings.timeout_s,
                cache_size=settings.cache_size,
                max_pending=settings.max_pending,
                listener=self._metrics.lookup_listener(target.api),
            )
            handle = self._handles[target.key] = _Handle(lookup, target)
        handle.active += 1
        try:
            answers = await handle.lookup.get_many(query.uids)
        except LookupOverloaded as exc:
            return _json({"error": exc.message}, status=503, headers={hdrs.RETRY_AFTER: "1"})
        except TimeoutError as exc:
            return _json({"error": str(exc) or "no answer in time"}, status=504)
        finally:
            handle.active -= 1
            if handle.retired and not handle.active:
                self._retire(handle)
        return self._answer(query, [answers[uid] for uid in query.uids])


def _error(target: Target, uid: str, code: str, message: str) -> dict[str, Any]:
    return {
        "type": "error",
        "api": target.api,
        "app_id": target.app_id,
        "group_id": target.group_id,
        "uid": uid,
        "code": code,
        "message": message,
    }


def _state_record(target: Target, uid: str, state: LastKnown | None, now: int) -> dict[str, Any]:
    """A UID's answer from state: presence with its age, or ``NotPolled``."""
    if state is None:
        return _error(
            target,
            uid,
            NOT_POLLED,
            "the daemon knows no state of this user ID: not polled yet, or not in the"
            " target's list",
        )
    if state.online is None:
        return _error(target, uid, NOT_POLLED, "every poll of this user ID failed so far")
    polled_at = state.polled_at
    return {
        "type": "presence",
        "api": target.api,
        "app_id": target.app_id,
        "group_id": target.group_id,
        "uid": uid,
        "online": state.online,
        "join_time": state.join_time,
        "polled_at": polled_at,
        "age_ms": None if polled_at is None else max(0, now - polled_at),
        "sweep": state.sweep,
    }
