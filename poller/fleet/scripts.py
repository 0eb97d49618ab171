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

A fleet ``F`` that splits its targets' UIDs (``shard_targets``) adds, with ``T`` a target as
``api/app_id/group_id`` (the group empty for an app-wide target)::

    poller:{A}:fleet:F:shard-members  ZSET  lease token -> its last lease tick
    poller:{A}:fleet:F:shard:<n>      STR   shard n's lease: its holder's token (PX lease_ttl)
    poller:{A}:fleet:F:leader         STR   the leader's token (PX lease_ttl): it lists members
    poller:{A}:fleet:F:shape          STR   "shards:lease_ttl_ms", the same for every member
    poller:{A}:fleet:F:discovered:<T> STR   the member list the leader last listed (JSON)
    poller:{A}:fleet:F:state:<T>      HASH  uid -> its last known state (JSON, see CHANGES)
    poller:{A}:fleet:F:born:<T>       STR   the sweep in which T's state began
    poller:{A}:fleet:F:changes        STREAM the fleet's change records (XADD MAXLEN ~)
    poller:{A}:fleet:F:delivered:<m>  STR   the last stream entry member m decided whose
                                            record its sinks flushed

A lease token is ``member#nonce``: a restarted process is a new member.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

__all__ = [
    "CHANGES",
    "FORGET",
    "HEARTBEAT",
    "LEASES",
    "PAUSE",
    "RESERVE",
    "BudgetKeys",
    "FleetKeys",
    "Keys",
]

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


#: One lease tick of a member: register it, then for every shard keep, hand over or take the
#: lease, as rendezvous hashing over the live members says.
#:
#: KEYS: shard-members, leader, shape, then the lease of every shard in order. ARGV: token,
#: ttl_ms, leaving ("1": the member leaves and gives every lease away), lead ("1": take the
#: leader lease when it is free).
#:
#: Every member must count the same shards with the same TTL: the first member writes
#: "shards:ttl_ms" to the shape key (it expires with the fleet), and a member whose shape
#: differs changes nothing and gets {"shape", the fleet's shape}.
#:
#: The live members are those whose last tick is at most ttl_ms old. Shard n belongs to the
#: live member m with the highest ``sha1(m .. '|' .. n)``: a member joining or leaving moves
#: only its own share. Each shard's lease is then, for this member:
#: - held and still its own: renewed (PX ttl_ms);
#: - held but now another's: handed over at once (set to the new owner's token), so the shard
#:   never goes unleased; with nobody live left, deleted;
#: - free and its own: taken (SET PX);
#: - held by another: left alone (its holder hands it over at its own tick, or it expires).
#:
#: Returns {now_ms, leader token or "", holder token or "" of every shard...}.
LEASES: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local token = ARGV[1]
local ttl = tonumber(ARGV[2])
local leaving = ARGV[3] == '1'
local shape = string.format('%d:%d', #KEYS - 3, ttl)
local fleet_shape = redis.call('GET', KEYS[3])
if fleet_shape and fleet_shape ~= shape and redis.call('ZCARD', KEYS[1]) > 0 then
  return {'shape', fleet_shape}
end
redis.call('SET', KEYS[3], shape, 'PX', ttl * 3)
if leaving then
  redis.call('ZREM', KEYS[1], token)
else
  redis.call('ZADD', KEYS[1], now, token)
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - ttl)
redis.call('PEXPIRE', KEYS[1], ttl * 3)
local live = redis.call('ZRANGE', KEYS[1], 0, -1)
local leader = redis.call('GET', KEYS[2])
if leader == token then
  if leaving or ARGV[4] ~= '1' then
    leader = live[1] or false  -- to another live member at once (or nobody)
    if leader then
      redis.call('SET', KEYS[2], leader, 'PX', ttl)
    else
      redis.call('DEL', KEYS[2])
    end
  else
    redis.call('PEXPIRE', KEYS[2], ttl)
  end
elseif not leader and not leaving and ARGV[4] == '1' then
  redis.call('SET', KEYS[2], token, 'PX', ttl)
  leader = token
end
local out = {string.format('%d', now), leader or ''}
for i = 4, #KEYS do
  local shard = tostring(i - 4)
  local best, score = false, ''
  for _, m in ipairs(live) do
    local w = redis.sha1hex(m .. '|' .. shard)
    if w > score then
      best, score = m, w
    end
  end
  local holder = redis.call('GET', KEYS[i])
  if holder == token then
    if best == token then
      redis.call('PEXPIRE', KEYS[i], ttl)
    elseif best then
      redis.call('SET', KEYS[i], best, 'PX', ttl)
      holder = best
    else
      redis.call('DEL', KEYS[i])
      holder = false
    end
  elseif not holder and best == token then
    redis.call('SET', KEYS[i], token, 'PX', ttl)
    holder = token
  end
  out[#out + 1] = holder or ''
end
return out
"""

#: Compare and set the fleet's state of one target's UIDs with one batch of poll results, and
#: append each transition to the change stream, in one step.
#:
#: KEYS: state (HASH), born (STR), changes (STREAM), origin (STR). ARGV: sweep, member, maxlen
#: (of the stream, approximate), state_ttl_ms, head (the change record's JSON up to the UID:
#: type, sweep, api, app_id, group_id), target (as in the key layout), then five per UID: uid, the
#: uid as JSON, result ("1" online, "0" offline, "e" an error: the state is unknown), join
#: time ("null" or an integer), polled_at (ms).
#:
#: A state is JSON: {"online": true|false|null, "join_time": int|null, "version": n, "sweep":
#: last sweep polled, "polled_at": ms[, "announce": bool]}. ``version`` counts transitions.
#: The first sweep of a target (born missing: a new target, or a Redis that lost its data)
#: learns every state silently (at version 0 in the fleet's first sweep, ``origin``; later at
#: the answer's polled_at, so a target polled again after its state expired never repeats a
#: version); a UID first seen later is announced (a change from null, its
#: version the answer's polled_at, as :func:`poller.core.changes.joined_version` says: never a
#: version of an earlier membership the leader forgot); an error never changes a known state;
#: a result older than the state's ``polled_at`` (a slower member during a handover) is ignored.
#: Each transition is XADDed with fields target, uid, online ("1"/"0"), version, member and
#: record (the change record's JSON, byte for byte what the member's sinks get).
#:
#: Returns one {index (1-based, among the UIDs), previous ("1", "0" or "null"), version,
#: stream id} per transition.
CHANGES: Final = """
local sweep = ARGV[1]
local member = ARGV[2]
local maxlen = ARGV[3]
local ttl = tonumber(ARGV[4])
local head = ARGV[5]
local target = ARGV[6]
local born = redis.call('GET', KEYS[2])
if not born then
  redis.call('SET', KEYS[2], sweep, 'PX', ttl)
  born = sweep
else
  redis.call('PEXPIRE', KEYS[2], ttl)
end
local first = born == sweep
-- The fleet's first sweep (no TTL): a target born later (added, or polled again after its
-- state expired) learns at a fresh version base, never repeating an earlier life's versions.
local origin = redis.call('GET', KEYS[4])
if not origin then
  redis.call('SET', KEYS[4], sweep)
  origin = sweep
end
local function state(online, join_time, version, polled_at, announce)
  local text = '{"online":' .. online .. ',"join_time":' .. join_time .. ',"version":' ..
    string.format('%d', version) .. ',"sweep":' .. sweep .. ',"polled_at":' .. polled_at
  if announce ~= nil then
    text = text .. ',"announce":' .. (announce and 'true' or 'false')
  end
  return text .. '}'
end
local function number(v)
  if v == cjson.null or v == nil then return 'null' end
  return string.format('%d', v)
end
local out = {}
local n = 0
for i = 7, #ARGV, 5 do
  n = n + 1
  local uid, uid_json, result, join_time, polled_at = ARGV[i], ARGV[i + 1], ARGV[i + 2],
    ARGV[i + 3], ARGV[i + 4]
  local raw = redis.call('HGET', KEYS[1], uid)
  local prev = raw and cjson.decode(raw)
  if prev and prev.polled_at ~= nil and tonumber(polled_at) < prev.polled_at then
    -- older than what is known: a slower member's answer during a handover
  elseif result == 'e' then
    if not prev then
      redis.call('HSET', KEYS[1], uid, state('null', 'null', 0, polled_at, not first))
    end
  else
    local online = result == '1' and 'true' or 'false'
    local version = 0
    local previous = nil
    if not prev or prev.online == cjson.null then
      if (prev and prev.announce) or (not prev and not first) then
        version, previous = math.max(1, tonumber(polled_at)), 'null'
      elseif born ~= origin then
        version = math.max(1, tonumber(polled_at))
      end
    elseif (prev.online and 'true' or 'false') ~= online or number(prev.join_time) ~= join_time then
      version, previous = prev.version + 1, prev.online and 'true' or 'false'
    else
      version = prev.version
    end
    redis.call('HSET', KEYS[1], uid, state(online, join_time, version, polled_at, nil))
    if previous then
      local record = head .. uid_json .. ',"online":' .. online .. ',"previous_online":' ..
        previous .. ',"join_time":' .. join_time .. ',"polled_at":' .. polled_at ..
        ',"version":' .. string.format('%d', version) .. '}'
      local id = redis.call('XADD', KEYS[3], 'MAXLEN', '~', maxlen, '*', 'target', target,
        'uid', uid, 'online', result, 'version', string.format('%d', version), 'member', member,
        'record', record)
      out[#out + 1] = {n, previous, string.format('%d', version), id}
    end
  end
end
redis.call('PEXPIRE', KEYS[1], ttl)
return out
"""

#: Forget the UIDs of one target not polled since sweep ARGV[1] (no longer in its list).
#: KEYS: state. ARGV: oldest sweep kept, then candidate UIDs (read by HSCAN; checked again
#: here, so a UID polled meanwhile stays). Returns the number forgotten.
FORGET: Final = """
local keep = tonumber(ARGV[1])
local gone = 0
for i = 2, #ARGV do
  local raw = redis.call('HGET', KEYS[1], ARGV[i])
  if raw and cjson.decode(raw).sweep < keep then
    redis.call('HDEL', KEYS[1], ARGV[i])
    gone = gone + 1
  end
end
return gone
"""


@dataclass(frozen=True, slots=True)
class FleetKeys:
    """The keys of one fleet's shards, leader and shared state (see the module docstring)."""

    account: str
    fleet: str

    def _key(self, *parts: str) -> str:
        return ":".join(("poller", "{" + self.account + "}", "fleet", self.fleet, *parts))

    @property
    def shard_members(self) -> str:
        return self._key("shard-members")

    def shard(self, n: int) -> str:
        return self._key("shard", str(n))

    @property
    def leader(self) -> str:
        return self._key("leader")

    @property
    def shape(self) -> str:
        return self._key("shape")

    @property
    def changes(self) -> str:
        return self._key("changes")

    def delivered(self, member: str) -> str:
        return self._key("delivered", member)

    def discovered(self, target: str) -> str:
        return self._key("discovered", target)

    def state(self, target: str) -> str:
        return self._key("state", target)

    def born(self, target: str) -> str:
        return self._key("born", target)

    @property
    def origin(self) -> str:
        return self._key("origin")
