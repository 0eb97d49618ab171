"""The emulator's request pipeline, the aiohttp application and a ready-to-run server.

Check order for an API request (``/``), first failure wins:

1. method is POST or GET (403 ``UnsupportedHTTPMethod``); body and query decoded (UTF-8, ``+``
   is a space);
2. routing: Action (``x-acs-action`` for V3, ``Action`` for V1) and Version known
   (``MissingParameter``, 404 ``InvalidAction.NotFound``, ``InvalidVersion``) — the gateway must
   know the API before it can look up its policies; from here the request counts in its
   action's statistics;
3. credential parsed and key found (``IncompleteSignature``, 404 ``InvalidAccessKeyId.NotFound``);
   from here the request counts in its account's statistics (overall and under its action);
4. STS token, signed-header policy, date format and window, Content-MD5, body hash, signature
   (:mod:`.auth`); then the nonce must be unused within the window (``SignatureNonceUsed``);
5. **throttling**: the sliding window of the (account, action) pair (400 ``Throttling.User`` +
   ``x-acs-retry-after``): ``qps`` for each legacy action, ``live_message_qps`` for each action
   of the current family. It sits after authentication because a budget can only be charged to
   a known, genuine caller, and before RAM and parameter checks because the real gateway meters
   calls, not successes;
6. fault draw (authenticated, admitted requests only) — ``reset_before`` aborts here, before the
   nonce is recorded;
7. the nonce is recorded (throttled requests record theirs too);
8. the action: ``AppId`` present, RAM grant (403 ``Forbidden``; ``NoAuth`` for the current
   family), other parameters, work (:mod:`.actions`); then ``malformed``/``partial``/
   ``reset_after`` faults shape the answer. Legacy answers are ``{"RequestId", "Result"}``, the
   current family's ``{"RequestId", ...top-level fields}``;
9. the configured latency, then the response, dated (``Date``) by the gateway's clock
   (:class:`.config.ServerClock`). Any unexpected exception is a 500 ``InternalError`` envelope.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Sequence
from typing import Any, Self
from urllib.parse import unquote, unquote_to_bytes

import orjson
from aiohttp import web

from poller.wire.signing import API_VERSION

from . import errors, inspection
from .accounts import AccessKey, KeyStore, NonceStore
from .actions import ACTIONS, LIVE_MESSAGE_ACTIONS, USER_LISTS
from .auth import AuthResult, Verifier
from .config import EmulatorConfig, ServerClock
from .errors import JSON_CONTENT_TYPE, ApiError
from .faults import (
    HTML_ERROR_PAGE,
    FaultDecision,
    FaultInjector,
    partial_online_users,
    truncate_json,
)
from .sockets import NoResponse, abort, listen
from .state import EmulatorState
from .throttle import Stats, StatsBlock

__all__ = ["EMULATOR_KEY", "Emulator", "EmulatorServer", "build_app"]

logger = logging.getLogger("poller.emulator")

_FORM_TYPE = "application/x-www-form-urlencoded"
_V1_MARKERS = ("Signature", "SignatureMethod", "AccessKeyId", "SignatureNonce")


def _unquote_plus(text: str) -> str:
    """``unquote_plus`` with strict UTF-8, with fast paths for the common shapes."""
    text = text.replace("+", " ")
    if text.count("%") == text.count("%2C"):  # UserIds: only the commas are escaped
        return text.replace("%2C", ",")
    if text.isascii():
        return unquote_to_bytes(text).decode("utf-8")
    return unquote(text, errors="strict")


def _decode_form(raw: bytes | str, what: str) -> dict[str, str]:
    """``application/x-www-form-urlencoded`` (or a query) to a dict: UTF-8, ``+`` is a space,
    blank values kept, the last of repeated names wins (``parse_qsl`` semantics, faster)."""
    out: dict[str, str] = {}
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        for pair in text.split("&"):
            if not pair:
                continue
            name, _, value = pair.partition("=")
            if "%" in name or "+" in name:
                name = _unquote_plus(name)
            if "%" in value or "+" in value:
                value = _unquote_plus(value)
            out[name] = value
    except UnicodeDecodeError:
        raise errors.invalid_parameter(what) from None
    return out


def _decode_query(raw_path: str) -> dict[str, str]:
    """The query of the request target as sent (``request.raw_path``: cheaper than yarl's)."""
    mark = raw_path.find("?")
    raw_query = raw_path[mark + 1 :] if mark >= 0 else ""
    return _decode_form(raw_query, "query") if raw_query else {}


class Emulator:
    """The emulated service: keys, nonces, groups, meters, faults and the request pipeline."""

    def __init__(self, config: EmulatorConfig) -> None:
        self.config = config
        self.keys = KeyStore(config.keys)
        self.verifier = Verifier(self.keys, config.date_window_s)
        self.nonces = NonceStore(config.nonce_capacity)
        self.state = EmulatorState(
            config.groups,
            online_fraction=config.online_fraction,
            churn_per_s=config.churn_per_s,
            seed=config.seed,
            wall_clock=config.wall_clock,
            apps=config.apps,
        )
        self.stats = Stats(
            config.qps,
            dict.fromkeys(LIVE_MESSAGE_ACTIONS, config.live_message_qps),
            live_message_qps=config.live_message_qps,
            known_actions=ACTIONS,
        )
        self.faults = FaultInjector(config.faults, config.effective_fault_seed)
        self.latency = config.latency
        self._latency_rng = random.Random(f"latency/{config.seed}")
        self.clock = ServerClock(config.wall_clock, config.clock_offset_s)
        self._mono = config.monotonic
        self._closing = asyncio.Event()
        self.new_request_id = errors.RequestIds()

    async def on_shutdown(self, app: web.Application) -> None:
        self._closing.set()  # releases hung requests so shutdown does not wait hang_s

    # ------------------------------------------------------------------------ responses

    def host_id(self, request: web.BaseRequest) -> str:
        return errors.host_id_from(request.headers.get("Host"), self.config.host)

    def error_response(
        self,
        request: web.BaseRequest,
        rid: str,
        exc: ApiError,
        blocks: Sequence[StatsBlock] = (),
    ) -> web.Response:
        """The envelope; counted (in total and ``blocks``) for API requests only."""
        if blocks or request.path == "/":
            self.stats.responded(blocks, exc.code, exc.status)
        headers = {"Content-Type": JSON_CONTENT_TYPE, "x-acs-request-id": rid, **exc.headers}
        body = errors.error_body(rid, self.host_id(request), exc.code, exc.message)
        return web.Response(status=exc.status, body=body, headers=headers)

    # ------------------------------------------------------------------------ the API

    async def handle_api(self, request: web.Request) -> web.StreamResponse:
        arrival = self._mono()
        rid = self.new_request_id()
        self.stats.total.arrive(arrival)
        blocks: list[StatsBlock] = []  # besides total: action, account, account under action
        try:
            response = await self._process(request, rid, arrival, blocks)
        except ApiError as exc:
            response = self.error_response(request, rid, exc, blocks)
        except (NoResponse, ConnectionError):
            self.stats.no_response(blocks)
            return web.Response()  # the transport is gone: this is never written
        except Exception:
            logger.exception("internal error while handling request %s", rid)
            response = self.error_response(request, rid, errors.internal_error(), blocks)
        if self.latency:
            await asyncio.sleep(self.latency.sample_s(self._latency_rng))
        response.headers["Date"] = self.clock.http_date()
        return response

    async def _process(
        self, request: web.Request, rid: str, arrival: float, blocks: list[StatsBlock]
    ) -> web.Response:
        """Steps 1-4 and 8 of the check order above; :meth:`_admit` does 5-7, the caller 9."""
        method = request.method
        if method != "POST" and method != "GET":
            raise errors.unsupported_method()
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:  # aiohttp's limit, 1 MiB
            raise errors.invalid_parameter("body") from None
        headers = request.headers
        query = _decode_query(request.raw_path)
        form: dict[str, str] = {}
        if body and headers.get("Content-Type", "").lower().startswith(_FORM_TYPE):
            form = _decode_form(body, "body")
        params = {**query, **form} if query else form

        v1 = "Authorization" not in headers and any(m in params for m in _V1_MARKERS)
        action_name = params.get("Action") if v1 else headers.get("x-acs-action")
        version = params.get("Version") if v1 else headers.get("x-acs-version")
        if not action_name:
            raise errors.missing_parameter("Action")
        action = ACTIONS.get(action_name)
        if action is None:
            raise errors.invalid_action()
        if not version:
            raise errors.missing_parameter("Version")
        if version != API_VERSION:
            raise errors.invalid_version()
        action_block = self.stats.action(action_name)
        action_block.arrive(arrival)
        blocks.append(action_block)

        now = self.clock.now()
        auth: AuthResult
        if v1:
            key = self.verifier.identify_v1(params)
            self._attribute(key.account, action_name, arrival, blocks)
            auth = self.verifier.verify_v1(
                key, method=method, headers=headers, params=params, body=body, now=now
            )
        else:
            v3auth, key = self.verifier.identify_v3(headers)
            self._attribute(key.account, action_name, arrival, blocks)
            auth = self.verifier.verify_v3(
                v3auth, key, method=method, headers=headers, query=query, body=body, now=now
            )
        if self.nonces.is_used(key.key_id, auth.nonce, now):
            raise errors.nonce_used()

        fault = self._admit(request, key, action_name, auth, blocks, arrival, now)
        if fault is not None:
            await self._early_fault(fault, request, action_name)
        result = action(self.state, params, key)
        if fault is not None:
            return self._late_fault(fault, request, rid, action_name, params, result, blocks)
        self.stats.responded(blocks, "OK", 200)
        return self._ok(rid, self._answer(rid, action_name, result))

    @staticmethod
    def _answer(rid: str, action_name: str, result: dict[str, Any]) -> bytes:
        """A success body: legacy ``{"RequestId", "Result"}``, current family top-level."""
        if action_name in LIVE_MESSAGE_ACTIONS:
            return orjson.dumps({"RequestId": rid, **result})
        return orjson.dumps({"RequestId": rid, "Result": result})

    def _admit(
        self,
        request: web.Request,
        key: AccessKey,
        action_name: str,
        auth: AuthResult,
        blocks: list[StatsBlock],
        arrival: float,
        now: float,
    ) -> FaultDecision | None:
        """Throttle (5), draw a fault (6), record the nonce (7): the fault to apply, if any."""
        limiter = self.stats.limiter(key.account, action_name)
        retry_after = limiter.try_acquire(arrival)
        if retry_after:
            self.nonces.record(key.key_id, auth.nonce, auth.nonce_expiry, now)
            self.stats.throttled(blocks)
            raise errors.throttled(retry_after, limiter.qps)
        self.stats.admit(blocks, arrival)

        fault = self.faults.draw()
        if fault is not None and fault.kind == "reset_before":
            self._count_fault(fault)
            abort(request, rst=True)
            raise NoResponse
        self.nonces.record(key.key_id, auth.nonce, auth.nonce_expiry, now)
        return fault

    def _attribute(
        self, account: str, action_name: str, arrival: float, blocks: list[StatsBlock]
    ) -> None:
        for block in (
            self.stats.account(account),
            self.stats.account_action(account, action_name),
        ):
            block.arrive(arrival)
            blocks.append(block)

    @staticmethod
    def _ok(rid: str, body: bytes) -> web.Response:
        return web.Response(
            body=body, headers={"Content-Type": JSON_CONTENT_TYPE, "x-acs-request-id": rid}
        )

    def _count_fault(self, fault: FaultDecision) -> None:
        self.stats.faults_injected[fault.kind] += 1

    async def _early_fault(
        self, fault: FaultDecision, request: web.Request, action_name: str
    ) -> None:
        """Faults that replace processing: 5xx, spurious throttling, hang."""
        kind = fault.kind
        if kind == "500":
            self._count_fault(fault)
            raise errors.internal_error()
        if kind == "503":
            self._count_fault(fault)
            raise errors.service_unavailable()
        if kind == "server_error":
            self._count_fault(fault)
            raise errors.server_error()
        if kind == "throttle":
            self._count_fault(fault)
            raise errors.throttled(1 + int(fault.detail * 1000), self.stats.qps_of(action_name))
        if kind == "hang":
            self._count_fault(fault)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), self.config.hang_s)
            abort(request, rst=False)
            raise NoResponse

    def _late_fault(
        self,
        fault: FaultDecision,
        request: web.Request,
        rid: str,
        action_name: str,
        params: dict[str, str],
        result: dict[str, Any],
        blocks: list[StatsBlock],
    ) -> web.Response:
        """Faults that shape (or drop) an answer that was fully computed."""
        kind = fault.kind
        if kind == "reset_after":
            self._count_fault(fault)
            abort(request, rst=True)
            raise NoResponse
        list_key = USER_LISTS.get(action_name)
        if kind == "partial" and list_key is not None:
            self._count_fault(fault)
            uids = params["UserIds"].split(",")  # validated by the action
            _, damaged = partial_online_users(
                result[list_key],
                uids,
                fault.detail,
                join_time=action_name not in LIVE_MESSAGE_ACTIONS,
            )
            result = {**result, list_key: damaged}
        elif kind == "malformed":
            self._count_fault(fault)
            if fault.detail < 0.5:
                body = self._answer(rid, action_name, result)
                self.stats.responded(blocks, "Malformed", 200)
                return self._ok(rid, truncate_json(body, fault.detail * 2))
            self.stats.responded(blocks, "Malformed", 502)
            return web.Response(
                status=502,
                body=HTML_ERROR_PAGE,
                headers={"Content-Type": "text/html", "x-acs-request-id": rid},
            )
        self.stats.responded(blocks, "OK", 200)
        return self._ok(rid, self._answer(rid, action_name, result))

    # ------------------------------------------------------------------------ other paths

    async def handle_not_found(self, request: web.Request) -> web.StreamResponse:
        rid = self.new_request_id()
        return self.error_response(request, rid, errors.invalid_action())


EMULATOR_KEY: web.AppKey[Emulator] = web.AppKey("poller_emulator", Emulator)


def build_app(config: EmulatorConfig | None = None) -> web.Application:
    """The emulator as an aiohttp application (for ``aiohttp.test_utils.TestServer`` and co)."""
    emulator = Emulator(config or EmulatorConfig())
    app = web.Application()
    app[EMULATOR_KEY] = emulator
    app.router.add_route("*", "/", emulator.handle_api)
    inspection.add_routes(app, emulator)
    app.router.add_route("*", "/{tail:.*}", emulator.handle_not_found)
    app.on_shutdown.append(emulator.on_shutdown)
    return app


class EmulatorServer:
    """Run the emulator on ``config.host``:``config.port`` (port 0: a free port)::

    async with EmulatorServer(EmulatorConfig(port=0)) as server:
        client_endpoint = server.endpoint  # "127.0.0.1:41234"
    """

    def __init__(self, config: EmulatorConfig | None = None) -> None:
        self.config = config or EmulatorConfig()
        self.app = build_app(self.config)
        self.emulator = self.app[EMULATOR_KEY]
        self._runner: web.AppRunner | None = None
        self._port: int | None = None
        self._used = False

    async def start(self) -> None:
        if self._used:
            raise RuntimeError("an EmulatorServer starts once; create a new one")
        self._used = True
        runner = await listen(self.app, self.config)
        self._runner = runner
        self._port = int(runner.addresses[0][1])

    async def close(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("emulator server not started")
        return self._port

    @property
    def endpoint(self) -> str:
        """``host:port`` — what the SDK's ``Config.endpoint`` wants (with ``protocol='http'``)."""
        host = self.config.host
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"

    @property
    def url(self) -> str:
        scheme = "https" if self.config.tls_cert is not None else "http"
        return f"{scheme}://{self.endpoint}"

    @property
    def state(self) -> EmulatorState:
        return self.emulator.state

    def stats(self) -> dict[str, Any]:
        return self.emulator.stats.as_dict()
