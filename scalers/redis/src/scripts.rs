//! The Lua scripts. Each runs atomically on the Redis server; every key a script
//! touches shares one hash tag (see [`crate::keys`]).
//!
//! Offsets travel as decimal strings (`string.format('%d')`), never through
//! Lua's `tostring`, which would switch to exponent notation for large numbers.

use redis::Script;
use std::sync::LazyLock;

/// Server time in milliseconds, for index scores.
const NOW_MS: &str = r"
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
";

/// Publish: one atomic step for offset, epoch, history, TTL and delivery.
///
/// KEYS: 1 meta hash, 2 history stream.
/// ARGV: 1 payload, 2 history size, 3 TTL ms, 4 candidate epoch (used only when
/// the channel has none), 5 pub/sub channel.
/// Returns `{offset, epoch}` (offset as a decimal string).
pub(crate) static PUBLISH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local epoch = redis.call('HGET', KEYS[1], 'e')
if not epoch then
  epoch = ARGV[4]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'e', epoch)
end
local offset = string.format('%d', redis.call('HINCRBY', KEYS[1], 'o', 1))
if tonumber(ARGV[2]) > 0 then
  redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[2], offset .. '-0', 'd', ARGV[1])
  redis.call('PEXPIRE', KEYS[2], ARGV[3])
else
  redis.call('DEL', KEYS[2])
end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PUBLISH', ARGV[5], offset .. ':' .. epoch .. ':' .. ARGV[1])
return {offset, epoch}
",
    )
});

/// History: the channel's top (creating its epoch if missing) and, with a
/// `since` position, the publications after it when all of them are still held.
///
/// KEYS: 1 meta hash, 2 history stream.
/// ARGV: 1 candidate epoch, 2 TTL ms for a newly created epoch, 3 since offset
/// (empty: top only), 4 since epoch, 5 limit, 6 first wanted stream id
/// (`<since+1>-0`).
/// Returns `{epoch, top, recovered (0/1), id1, payload1, id2, payload2, ...}`.
pub(crate) static HISTORY: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local epoch = redis.call('HGET', KEYS[1], 'e')
if not epoch then
  epoch = ARGV[1]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'e', epoch, 'o', 0)
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
local top = redis.call('HGET', KEYS[1], 'o') or '0'
if ARGV[3] == '' then
  return {epoch, top, 1}
end
if ARGV[4] ~= epoch then
  return {epoch, top, 0}
end
local since = tonumber(ARGV[3])
local topn = tonumber(top)
if since > topn then
  return {epoch, top, 0}
end
local missed = topn - since
if missed == 0 then
  return {epoch, top, 1}
end
if missed > tonumber(ARGV[5]) then
  return {epoch, top, 0}
end
local entries = redis.call('XRANGE', KEYS[2], ARGV[6], '+', 'COUNT', string.format('%d', missed))
if #entries ~= missed or entries[1][1] ~= ARGV[6] then
  return {epoch, top, 0}
end
local out = {epoch, top, 1}
for _, entry in ipairs(entries) do
  out[#out + 1] = entry[1]
  out[#out + 1] = entry[2][2]
end
return out
",
    )
});

/// Registers or refreshes an instance.
///
/// KEYS: 1 instance key, 2 registry index. ARGV: 1 JSON, 2 TTL ms, 3 id.
pub(crate) static REGISTER: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"{NOW_MS}
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('ZADD', KEYS[2], now_ms() + tonumber(ARGV[2]) + 1000, ARGV[3])
return 1
"
    ))
});

/// Removes an instance. KEYS: 1 instance key, 2 registry index. ARGV: 1 id.
pub(crate) static UNREGISTER: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
",
    )
});

/// Lists live instances, dropping index entries whose key expired.
///
/// KEYS: 1 registry index. ARGV: 1 instance key prefix.
/// Returns the JSON of each live instance. The instance keys are computed from
/// the index; they share the index's `{registry}` hash tag, so they are in its
/// slot.
pub(crate) static INSTANCES: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"{NOW_MS}
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_ms())
local out = {{}}
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local v = redis.call('GET', ARGV[1] .. id)
  if v then
    out[#out + 1] = v
  else
    redis.call('ZREM', KEYS[1], id)
  end
end
return out
"
    ))
});

/// Takes a lease if free, renews it if the caller holds it.
///
/// KEYS: 1 lease key, 2 lease index. ARGV: 1 owner, 2 TTL ms, 3 lease name.
/// Returns `{1, owner}` when acquired, `{0, holder}` otherwise.
pub(crate) static ACQUIRE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"{NOW_MS}
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  local holder = redis.call('GET', KEYS[1])
  if holder ~= ARGV[1] then
    return {{0, holder}}
  end
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
redis.call('ZADD', KEYS[2], now_ms() + tonumber(ARGV[2]) + 1000, ARGV[3])
return {{1, ARGV[1]}}
"
    ))
});

/// Extends a lease if the caller holds it.
///
/// KEYS: 1 lease key, 2 lease index. ARGV: 1 owner, 2 TTL ms, 3 lease name.
pub(crate) static RENEW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"{NOW_MS}
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[2], now_ms() + tonumber(ARGV[2]) + 1000, ARGV[3])
return 1
"
    ))
});

/// Gives up a lease if the caller holds it.
///
/// KEYS: 1 lease key, 2 lease index. ARGV: 1 owner, 2 lease name.
pub(crate) static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[2])
return 1
",
    )
});

/// Lists live leases whose name starts with a prefix.
///
/// KEYS: 1 lease index. ARGV: 1 lease key prefix, 2 name prefix.
/// Returns `{name1, owner1, name2, owner2, ...}`. Lease keys share the index's
/// `{lease}` hash tag.
pub(crate) static LEASES: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"{NOW_MS}
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_ms())
local out = {{}}
local p = ARGV[2]
for _, name in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  if string.sub(name, 1, #p) == p then
    local owner = redis.call('GET', ARGV[1] .. name)
    if owner then
      out[#out + 1] = name
      out[#out + 1] = owner
    else
      redis.call('ZREM', KEYS[1], name)
    end
  end
end
return out
"
    ))
});
