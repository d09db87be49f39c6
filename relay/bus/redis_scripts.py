"""The Lua scripts of the Redis bus's presence (see :mod:`relay.bus.redis_presence` for the model).

Each script is atomic in Redis, reads the time with ``TIME`` (so every node compares entries on one
clock, Redis'), and publishes only notes the calling node encoded beforehand. Members are
``{device_id}/{session_id}``; scores are the Redis time (ms) after which an entry is dead.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, cast

import attrs
import redis

__all__ = ["ANNOUNCE_OFFLINE", "BEAT", "JOIN", "LEAVE", "ONLINE", "PresenceScripts", "Script"]

_PRELUDE = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
-- Drops the dead entries of a device; true when it still has a live one.
local function prune_device(key, device, now)
  local prefix = device .. '/'
  local live = false
  local entries = redis.call('ZRANGE', key, 0, -1, 'WITHSCORES')
  for i = 1, #entries, 2 do
    local m = entries[i]
    if string.sub(m, 1, #prefix) == prefix then
      if tonumber(entries[i + 1]) >= now then
        live = true
      else
        redis.call('ZREM', key, m)
      end
    end
  end
  return live
end
-- The key outlives its newest entry (never shortened, should nodes disagree on heartbeat_ms).
local function keep(key, lifetime)
  if redis.call('PTTL', key) < lifetime then
    redis.call('PEXPIRE', key, lifetime)
  end
end
"""

#: KEYS: presence key. ARGV: member, device, lifetime ms, control channel, replace note, user channel,
#: online note. Adds the session; publishes the replace note, and the online note when the device had no
#: live entry. Returns 1 when it announced online.
JOIN = (
    _PRELUDE
    + """
local now = now_ms()
local lifetime = tonumber(ARGV[3])
local first = not prune_device(KEYS[1], ARGV[2], now)
redis.call('ZADD', KEYS[1], now + lifetime, ARGV[1])
keep(KEYS[1], lifetime)
redis.call('PUBLISH', ARGV[4], ARGV[5])
if first then
  redis.call('PUBLISH', ARGV[6], ARGV[7])
  return 1
end
return 0
"""
)

#: KEYS: presence key. ARGV: member, device, user channel, offline note. Removes the session; publishes
#: the offline note when it was the device's last live entry. Returns 1 when it announced offline, 0 also
#: when the entry was already gone (whoever removed it announced what there was to announce).
LEAVE = (
    _PRELUDE
    + """
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then
  return 0
end
if prune_device(KEYS[1], ARGV[2], now_ms()) then
  return 0
end
redis.call('PUBLISH', ARGV[3], ARGV[4])
return 1
"""
)

#: KEYS: presence key. ARGV: lifetime ms, then the members this node holds for the user. Renews the
#: members that are still there and sweeps the dead entries of the user. Returns ``{missing, gone}``:
#: this node's members that were not there any more, and the devices the sweep left without a live entry.
BEAT = (
    _PRELUDE
    + """
local key = KEYS[1]
local now = now_ms()
local lifetime = tonumber(ARGV[1])
local missing = {}
local renewed = false
for i = 2, #ARGV do
  if redis.call('ZSCORE', key, ARGV[i]) then
    redis.call('ZADD', key, now + lifetime, ARGV[i])
    renewed = true
  else
    missing[#missing + 1] = ARGV[i]
  end
end
local dead = string.format('(%d', now)
local expired = redis.call('ZRANGEBYSCORE', key, '-inf', dead)
local gone = {}
if #expired > 0 then
  redis.call('ZREMRANGEBYSCORE', key, '-inf', dead)
  local seen = {}
  for _, m in ipairs(expired) do
    local device = string.match(m, '^([^/]*)/')
    if device and not seen[device] then
      seen[device] = true
      if not prune_device(key, device, now) then
        gone[#gone + 1] = device
      end
    end
  end
end
if renewed then
  keep(key, lifetime)
end
return {missing, gone}
"""
)

#: KEYS: presence key. ARGV: device, user channel, offline note. Publishes the note only if the device
#: still has no live entry. Returns 1 when it published.
ANNOUNCE_OFFLINE = (
    _PRELUDE
    + """
if prune_device(KEYS[1], ARGV[1], now_ms()) then
  return 0
end
redis.call('PUBLISH', ARGV[2], ARGV[3])
return 1
"""
)

#: KEYS: presence key. The live members of the user.
ONLINE = (
    _PRELUDE
    + """
return redis.call('ZRANGEBYSCORE', KEYS[1], now_ms(), '+inf')
"""
)


class Script(Protocol):
    """A registered script, as redis-py calls it (its own annotations are partial).

    With ``client`` a pipeline, the call is queued and its answer comes from ``execute()``.
    """

    def __call__(
        self, keys: Sequence[bytes], args: Sequence[bytes | int], client: object = None
    ) -> object: ...


@attrs.frozen
class PresenceScripts:
    """The scripts above, registered with a client (loaded into Redis when first missing)."""

    join: Script
    leave: Script
    beat: Script
    announce_offline: Script
    online: Script

    @classmethod
    def register(cls, client: redis.Redis) -> PresenceScripts:
        def script(source: str) -> Script:
            return cast(Script, client.register_script(source))

        return cls(script(JOIN), script(LEAVE), script(BEAT), script(ANNOUNCE_OFFLINE), script(ONLINE))
