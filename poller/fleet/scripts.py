"""The fleet's Lua scripts and key layout: everything that runs inside Redis.

Every script reads the time from ``redis.call('TIME')``, never from a client, so members on
hosts whose clocks disagree still share one timeline. Times are milliseconds of Redis time;
replies carry numbers as strings (Redis truncates Lua numbers to integers).

Keys (``A`` is the budget's account, in braces: a Redis Cluster hash tag, so that one script's
keys would share a slot; Redis Cluster itself is not supported yet)::

    poller:{A}:<action>:log     ZSET  grant -> its slot time; the sliding-window log
    poller:{A}:<action>:pause   STR   no slot before this time (a throttle, or a new epoch)
    poller:{A}:<action>:epoch   STR   present while the log is trustworthy (see RESERVE)
    poller:{A}:<action>:usage   HASH  unix second -> grants, for ``poller cluster status``
    poller:{A}:<action>:rates   HASH  member -> "fraction:time": its meter's share of the rate
    poller:{A}:members          ZSET  member -> its last heartbeat
    poller:{A}:member:<member>  HASH  what a member says about itself; expires with it
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

__all__ = ["HEARTBEAT", "PAUSE", "RESERVE", "BudgetKeys", "Keys"]

#: Reserve up to ``want`` slots of the shared budget.
#:
#: KEYS: log, pause, epoch, usage, members, rates. ARGV: limit (grants per window), window_ms
#: (the window plus margin), spacing_ms (between consecutive slots at the full rate), want,
#: ahead_ms (reserve no slot further ahead than this), tag (the member's, for the log
#: entries), quarantine_ms (see below; 0 normally), fraction (of the full rate this member's
#: meter allows now: below 1 after a cut), then any number of ages in ms: this member's sends
#: made while Redis was unreachable, entered into the log first.
#:
#: Slots are handed out in time order: each is at least ``spacing_ms / fraction`` after the
#: last one in the log, with the smallest fraction any member reported in the last 2 s (a cut
#: slows the whole fleet, as it would slow one process), and, when the log holds ``limit`` or
#: more grants, one window after the one that must leave it, so no window of ``window_ms``
#: ever holds more than ``limit`` slots. A slot may lie ahead of now; its member sends at or
#: before it, which only makes the log more cautious.
#:
#: Grants the log does not hold must age out before it admits anyone: when the epoch key is
#: missing (a new budget, or a Redis that lost its data) no slot is handed out for one window;
#: a member back from a spell without Redis passes ``quarantine_ms`` (a window plus the time
#: the other members take to notice Redis is back and report their own sends), and nobody gets
#: a slot before it has passed.
#:
#: Returns {epoch, wait_ms, members, now_ms, offset_ms...}: the offsets from now (Redis time) of
#: the slots granted (with none granted, wait_ms says when asking again can succeed), and the
#: members whose heartbeat is at most a minute old (FORGET_MEMBERS_S).
RESERVE: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local spacing = tonumber(ARGV[3])
local want = tonumber(ARGV[4])
local ahead = tonumber(ARGV[5])
local tag = ARGV[6]
local quarantine = tonumber(ARGV[7])
local slowest = tonumber(ARGV[8])
redis.call('HSET', KEYS[6], tag, string.format('%.4f:%.3f', slowest, now))
local rates = redis.call('HGETALL', KEYS[6])
for i = 1, #rates, 2 do
  local fraction, seen = string.match(rates[i + 1], '([^:]+):(.+)')
  if tonumber(seen) < now - 2000 then
    redis.call('HDEL', KEYS[6], rates[i])
  else
    slowest = math.min(slowest, tonumber(fraction))
  end
end
redis.call('PEXPIRE', KEYS[6], 60000)
spacing = spacing / math.max(slowest, 0.01)
local paused = tonumber(redis.call('GET', KEYS[2]) or '0')
local function pause_for(ms)
  if now + ms > paused then
    paused = now + ms
    redis.call('SET', KEYS[2], string.format('%.3f', paused), 'PX', math.ceil(ms) + 1000)
  end
end
local epoch = redis.call('GET', KEYS[3])
if not epoch then
  epoch = string.format('%.3f', now) .. '-' .. tag
  redis.call('SET', KEYS[3], epoch, 'PX', 86400000)
  pause_for(window)
else
  redis.call('PEXPIRE', KEYS[3], 86400000)
end
if quarantine > 0 then
  pause_for(quarantine)
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
for i = 9, #ARGV do
  local at = now - tonumber(ARGV[i])
  if at > now - window then
    redis.call('ZADD', KEYS[1], at, tag .. ':local:' .. i .. ':' .. string.format('%.3f', at))
  end
end
local at = math.max(now, paused)
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
if last[2] then at = math.max(at, tonumber(last[2]) + spacing) end
local count = redis.call('ZCARD', KEYS[1])
local members = redis.call('ZCOUNT', KEYS[5], now - 60000, '+inf')
local out = {epoch, '0', members, string.format('%.3f', now)}
local granted = 0
while granted < want do
  if count >= limit then
    local oldest = redis.call('ZRANGE', KEYS[1], count - limit, count - limit, 'WITHSCORES')
    at = math.max(at, tonumber(oldest[2]) + window)
  end
  if at - now > ahead then
    break
  end
  redis.call('ZADD', KEYS[1], at, tag .. ':' .. string.format('%.3f', at))
  count = count + 1
  granted = granted + 1
  out[#out + 1] = string.format('%.3f', at - now)
  at = at + spacing
end
if granted == 0 then
  out[2] = string.format('%.3f', at - now - ahead)
else
  redis.call('HINCRBY', KEYS[4], string.format('%d', math.floor(now / 1000)), granted)
  redis.call('PEXPIRE', KEYS[4], 120000)
end
redis.call('PEXPIRE', KEYS[1], math.ceil(window + ahead) + 1000)
return out
"""
#: Every member yields: no slot before now + ARGV[1] ms (a later pause already set stays).
#: KEYS: pause. Returns the ms until the pause in force ends.
PAUSE: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local ms = tonumber(ARGV[1])
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if now + ms > current then
  redis.call('SET', KEYS[1], string.format('%.3f', now + ms), 'PX', math.ceil(ms) + 1000)
  current = now + ms
end
return string.format('%.3f', current - now)
"""

#: A member's heartbeat: register (or refresh) it, forget members silent for ARGV[3] ms, and
#: drop usage counters older than two minutes.
#:
#: KEYS: members, this member's hash, then the usage hashes of its budgets. ARGV: member,
#: hash ttl_ms, forget_ms, then field, value pairs for the member's hash.
#: Returns {members seen within forget_ms, now_ms}.
HEARTBEAT: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local forget = tonumber(ARGV[3])
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - forget)
redis.call('PEXPIRE', KEYS[1], forget * 2)
if #ARGV > 3 then
  redis.call('HSET', KEYS[2], unpack(ARGV, 4))
end
redis.call('HSET', KEYS[2], 'heartbeat_ms', string.format('%d', now))
redis.call('PEXPIRE', KEYS[2], ARGV[2])
local oldest = math.floor(now / 1000) - 120
for i = 3, #KEYS do
  for _, second in ipairs(redis.call('HKEYS', KEYS[i])) do
    if tonumber(second) < oldest then redis.call('HDEL', KEYS[i], second) end
  end
end
return {redis.call('ZCARD', KEYS[1]), string.format('%d', now)}
"""


@dataclass(frozen=True, slots=True)
class BudgetKeys:
    """The keys of one budget (an account's API action), in the order RESERVE takes them."""

    log: str
    pause: str
    epoch: str
    usage: str
    rates: str


@dataclass(frozen=True, slots=True)
class Keys:
    """The key layout of one account's budgets and members (see the module docstring)."""

    account: str

    def _key(self, *parts: str) -> str:
        return ":".join(("poller", "{" + self.account + "}", *parts))

    @property
    def members(self) -> str:
        return self._key("members")

    def member(self, member: str) -> str:
        return self._key("member", member)

    def budget(self, action: str) -> BudgetKeys:
        return BudgetKeys(
            log=self._key(action, "log"),
            pause=self._key(action, "pause"),
            epoch=self._key(action, "epoch"),
            usage=self._key(action, "usage"),
            rates=self._key(action, "rates"),
        )
