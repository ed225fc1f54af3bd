//! The Lua scripts. Each runs atomically on the Redis server; every key a script
//! touches shares one hash tag (see [`crate::keys`]).
//!
//! Offsets travel as decimal strings (`string.format('%d')`), never through
//! Lua's `tostring`, which would switch to exponent notation for large numbers.

use redis::{Cmd, Script, ToRedisArgs};
use std::sync::LazyLock;

/// A Lua script: run by its SHA1 (`EVALSHA`), by its source (`EVAL`) when the
/// node has not loaded it yet. (On a Redis Cluster a replica promoted by a
/// failover has none of the scripts its primary had loaded; `EVAL` on the node
/// the command reaches loads it there, where `SCRIPT LOAD` would have to reach
/// every primary, which fails while one is down.)
pub(crate) struct Lua {
    script: Script,
    source: String,
}

impl Lua {
    fn new(source: impl Into<String>) -> Self {
        let source = source.into();
        Self {
            script: Script::new(&source),
            source,
        }
    }

    /// A call of this script, to be given its keys and arguments.
    pub(crate) fn prepare_invoke(&self) -> Invocation<'_> {
        Invocation {
            lua: self,
            keys: Vec::new(),
            args: Vec::new(),
        }
    }
}

/// One call of a [`Lua`] script with its keys and arguments.
pub(crate) struct Invocation<'a> {
    lua: &'a Lua,
    keys: Vec<Vec<u8>>,
    args: Vec<Vec<u8>>,
}

impl Invocation<'_> {
    /// Adds a key (routes the call on a cluster: the first key's slot).
    pub(crate) fn key<T: ToRedisArgs>(&mut self, key: T) -> &mut Self {
        self.keys.extend(key.to_redis_args());
        self
    }

    /// Adds an argument.
    pub(crate) fn arg<T: ToRedisArgs>(&mut self, arg: T) -> &mut Self {
        self.args.extend(arg.to_redis_args());
        self
    }

    /// `EVALSHA` (by hash) or `EVAL` (with the source) of this call.
    pub(crate) fn cmd(&self, with_source: bool) -> Cmd {
        let mut cmd = if with_source {
            let mut c = redis::cmd("EVAL");
            c.arg(&self.lua.source);
            c
        } else {
            let mut c = redis::cmd("EVALSHA");
            c.arg(self.lua.script.get_hash());
            c
        };
        cmd.arg(self.keys.len()).arg(&self.keys).arg(&self.args);
        cmd
    }
}

/// Server time in milliseconds, for index scores.
const NOW_MS: &str = r"
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
";

/// On a Redis Cluster (`flag` = `1`): the id of the node running the script;
/// on a primary found through Sentinel (`2`): its run id (a replica promoted
/// by Sentinel has another); else `''`. `meta` (HMGET e, n) belongs to a channel whose epoch must be new
/// when a different node recorded it: a replica promoted after its primary
/// failed may lack publications the primary already acknowledged (replication
/// is asynchronous), and reusing their offsets under the old epoch would make
/// subscribers that saw them take the new ones for duplicates. (A slot moved by
/// resharding starts a new epoch too: the script cannot tell the two apart.)
const NODE: &str = r"
local function node_of(flag)
  if flag == '1' then
    return redis.call('CLUSTER', 'MYID')
  end
  if flag == '2' then
    return string.match(redis.call('INFO', 'server'), 'run_id:(%w+)') or ''
  end
  return ''
end
local function epoch_stale(meta, node)
  return not meta[1] or (node ~= '' and meta[2] ~= node)
end
";

/// Publish: one atomic step for offset, epoch, history, TTL and delivery.
///
/// KEYS: 1 meta hash (`e` epoch, `o` offset, `n` node id on a cluster),
/// 2 history stream.
/// ARGV: 1 payload, 2 history size, 3 TTL ms, 4 candidate epoch (used only when
/// the channel needs a new one), 5 pub/sub channel, 6 server flag (`1`: a
/// cluster, sharded `SPUBLISH` and the node id check; `2`: Sentinel, the run
/// id check; `0`: neither).
/// Returns `{offset, epoch}` (offset as a decimal string).
pub(crate) static PUBLISH: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(format!(
        r"{NODE}
local node = node_of(ARGV[6])
local meta = redis.call('HMGET', KEYS[1], 'e', 'n')
local epoch = meta[1]
if epoch_stale(meta, node) then
  epoch = ARGV[4]
  redis.call('DEL', KEYS[1], KEYS[2])
  redis.call('HSET', KEYS[1], 'e', epoch)
  if node ~= '' then
    redis.call('HSET', KEYS[1], 'n', node)
  end
end
local offset = string.format('%d', redis.call('HINCRBY', KEYS[1], 'o', 1))
if tonumber(ARGV[2]) > 0 then
  redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[2], offset .. '-0', 'd', ARGV[1])
  redis.call('PEXPIRE', KEYS[2], ARGV[3])
else
  redis.call('DEL', KEYS[2])
end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
local envelope = offset .. ':' .. epoch .. ':' .. ARGV[1]
if ARGV[6] == '1' then
  redis.call('SPUBLISH', ARGV[5], envelope)
else
  redis.call('PUBLISH', ARGV[5], envelope)
end
return {{offset, epoch}}
"
    ))
});

/// The publish script's source, for tools that drive it without the scaler
/// (the benchmark's `redis-benchmark` run): KEYS and ARGV as for [`PUBLISH`].
pub fn publish_script_source() -> &'static str {
    &PUBLISH.source
}

/// History: the channel's top (creating its epoch if missing) and, with a
/// `since` position, the publications after it when all of them are still held.
///
/// KEYS: 1 meta hash, 2 history stream.
/// ARGV: 1 candidate epoch, 2 TTL ms for a newly created epoch, 3 since offset
/// (empty: top only), 4 since epoch, 5 limit, 6 first wanted stream id
/// (`<since+1>-0`), 7 cluster flag (as for [`PUBLISH`]).
/// Returns `{epoch, top, recovered (0/1), id1, payload1, id2, payload2, ...}`.
pub(crate) static HISTORY: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(format!(
        r"{NODE}
local node = node_of(ARGV[7])
local meta = redis.call('HMGET', KEYS[1], 'e', 'n')
local epoch = meta[1]
if epoch_stale(meta, node) then
  epoch = ARGV[1]
  redis.call('DEL', KEYS[1], KEYS[2])
  redis.call('HSET', KEYS[1], 'e', epoch, 'o', 0)
  if node ~= '' then
    redis.call('HSET', KEYS[1], 'n', node)
  end
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
local top = redis.call('HGET', KEYS[1], 'o') or '0'
if ARGV[3] == '' then
  return {{epoch, top, 1}}
end
if ARGV[4] ~= epoch then
  return {{epoch, top, 0}}
end
local since = tonumber(ARGV[3])
local topn = tonumber(top)
if since > topn then
  return {{epoch, top, 0}}
end
local missed = topn - since
if missed == 0 then
  return {{epoch, top, 1}}
end
if missed > tonumber(ARGV[5]) then
  return {{epoch, top, 0}}
end
local entries = redis.call('XRANGE', KEYS[2], ARGV[6], '+', 'COUNT', string.format('%d', missed))
if #entries ~= missed or entries[1][1] ~= ARGV[6] then
  return {{epoch, top, 0}}
end
local out = {{epoch, top, 1}}
for _, entry in ipairs(entries) do
  out[#out + 1] = entry[1]
  out[#out + 1] = entry[2][2]
end
return out
"
    ))
});

/// Registers or refreshes an instance.
///
/// KEYS: 1 instance key, 2 registry index. ARGV: 1 JSON, 2 TTL ms, 3 id.
pub(crate) static REGISTER: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(format!(
        r"{NOW_MS}
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('ZADD', KEYS[2], now_ms() + tonumber(ARGV[2]) + 1000, ARGV[3])
return 1
"
    ))
});

/// Removes an instance. KEYS: 1 instance key, 2 registry index. ARGV: 1 id.
pub(crate) static UNREGISTER: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(
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
/// Returns `{{json...}, {gone id...}}`: the JSON of each live instance, and the
/// ids this call found gone (expired), whose presence entries the caller then
/// sweeps. An id is reported gone by exactly one call. The instance keys are
/// computed from the index; they share the index's `{registry}` hash tag, so
/// they are in its slot.
pub(crate) static INSTANCES: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(format!(
        r"{NOW_MS}
local gone = {{}}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now_ms())) do
  redis.call('ZREM', KEYS[1], id)
  gone[#gone + 1] = id
end
local out = {{}}
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local v = redis.call('GET', ARGV[1] .. id)
  if v then
    out[#out + 1] = v
  else
    redis.call('ZREM', KEYS[1], id)
    gone[#gone + 1] = id
  end
end
return {{out, gone}}
"
    ))
});

/// Deletes a channel's presence entries of one instance.
///
/// KEYS: 1 presence hash. ARGV: 1 instance id. Returns how many were deleted.
pub(crate) static PRESENCE_SWEEP: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(
        r"
local n = 0
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local ok, e = pcall(cjson.decode, all[i + 1])
  if ok and type(e) == 'table' and (e['i'] == ARGV[1] or e['instance'] == ARGV[1]) then
    redis.call('HDEL', KEYS[1], all[i])
    n = n + 1
  end
end
return n
",
    )
});

/// Takes a lease if free (with a new fencing token), renews it if the caller
/// holds it (keeping its token).
///
/// The lease value is `<token>:<owner>`. Tokens come from one counter for all
/// leases (`KEYS[3]`, never expires): a per-key counter would have to outlive
/// its lease, a global one only ever grows.
///
/// KEYS: 1 lease key, 2 lease index, 3 token counter. ARGV: 1 owner, 2 TTL ms,
/// 3 lease name.
/// Returns `{1, owner, token}` when acquired, `{0, holder, token}` otherwise.
pub(crate) static ACQUIRE: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(format!(
        r"{NOW_MS}
local cur = redis.call('GET', KEYS[1])
local token
if cur then
  local sep = string.find(cur, ':', 1, true)
  token = string.sub(cur, 1, sep - 1)
  local holder = string.sub(cur, sep + 1)
  if holder ~= ARGV[1] then
    return {{0, holder, token}}
  end
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
else
  token = string.format('%d', redis.call('INCR', KEYS[3]))
  redis.call('SET', KEYS[1], token .. ':' .. ARGV[1], 'PX', ARGV[2])
end
redis.call('ZADD', KEYS[2], now_ms() + tonumber(ARGV[2]) + 1000, ARGV[3])
return {{1, ARGV[1], token}}
"
    ))
});

/// Extends a lease if the caller holds it with this token.
///
/// KEYS: 1 lease key, 2 lease index. ARGV: 1 `<token>:<owner>`, 2 TTL ms, 3 lease name.
pub(crate) static RENEW: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(format!(
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

/// Gives up a lease if the caller holds it with this token.
///
/// KEYS: 1 lease key, 2 lease index. ARGV: 1 `<token>:<owner>`, 2 lease name.
pub(crate) static RELEASE: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(
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
/// Returns `{name1, value1, name2, value2, ...}` (values `<token>:<owner>`).
/// Lease keys share the index's `{lease}` hash tag.
pub(crate) static LEASES: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(format!(
        r"{NOW_MS}
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_ms())
local out = {{}}
local p = ARGV[2]
for _, name in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  if string.sub(name, 1, #p) == p then
    local value = redis.call('GET', ARGV[1] .. name)
    if value then
      out[#out + 1] = name
      out[#out + 1] = value
    else
      redis.call('ZREM', KEYS[1], name)
    end
  end
end
return out
"
    ))
});

/// Forgets, in the key-value indexes, up to `n` names whose TTL passed (their
/// item keys expired by themselves).
const KV_SWEEP: &str = r"
local function kv_sweep(names, exp, n)
  local gone = redis.call('ZRANGEBYSCORE', exp, '-inf', now_ms(), 'LIMIT', 0, n)
  for _, name in ipairs(gone) do
    redis.call('ZREM', names, name)
    redis.call('ZREM', exp, name)
  end
end
";

/// Forgets up to 1000 expired names in the key-value indexes (the sweep).
///
/// KEYS: 1 names, 2 exp. Returns how many names were still indexed before.
pub(crate) static KV_SWEEP_EXPIRED: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(format!(
        r"{NOW_MS}{KV_SWEEP}
kv_sweep(KEYS[1], KEYS[2], 1000)
return redis.call('ZCARD', KEYS[2])
"
    ))
});

/// The precondition of a key-value write, decided like
/// `scaled_sockets_scaler::check::mode_holds`. `rev` and `fence` are the item's
/// (false when absent). Returns nil when it holds, else the conflict message.
const KV_MODE: &str = r"
local function kv_conflict(mode, arg, rev, fence)
  if mode == 'create' and rev then
    return 'create-only put: the key exists (revision ' .. rev .. ')'
  end
  if mode == 'rev' and rev ~= arg then
    return 'expected revision ' .. arg .. ', found ' .. (rev and ('revision ' .. rev) or 'no value')
  end
  if mode == 'fence' and rev and tonumber(arg) < tonumber(fence or '0') then
    return 'fencing token ' .. arg .. ' is below the key' .. string.char(39) .. 's fence ' .. fence
  end
  return nil
end
";

/// Writes a key-value item if its precondition holds.
///
/// The item is a hash (`v` value, `r` revision, `f` fence) with the item's TTL.
/// Revisions come from one counter for all items (never expires), so they grow
/// per key across deletes and expiry. `names` (all scores 0) lists the names
/// for prefix listing by lex range; `exp` scores names with a TTL by expiry, so
/// expired names leave `names` too.
///
/// KEYS: 1 item, 2 names, 3 exp, 4 revision counter.
/// ARGV: 1 value, 2 mode (`any`, `create`, `rev`, `fence`), 3 mode argument,
/// 4 TTL ms (`0`: none), 5 name.
/// Returns `{1, revision}` or `{0, conflict message}`.
pub(crate) static KV_PUT: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(format!(
        r"{NOW_MS}{KV_SWEEP}{KV_MODE}
kv_sweep(KEYS[2], KEYS[3], 16)
local cur = redis.call('HMGET', KEYS[1], 'r', 'f')
local why = kv_conflict(ARGV[2], ARGV[3], cur[1], cur[2])
if why then
  return {{0, why}}
end
local fence = tonumber(cur[2] or '0')
if ARGV[2] == 'fence' and tonumber(ARGV[3]) > fence then
  fence = tonumber(ARGV[3])
end
local rev = string.format('%d', redis.call('INCR', KEYS[4]))
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'v', ARGV[1], 'r', rev, 'f', string.format('%d', fence))
if ARGV[4] ~= '0' then
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
  redis.call('ZADD', KEYS[3], now_ms() + tonumber(ARGV[4]), ARGV[5])
else
  redis.call('ZREM', KEYS[3], ARGV[5])
end
redis.call('ZADD', KEYS[2], 0, ARGV[5])
return {{1, rev}}
"
    ))
});

/// Deletes a key-value item if its precondition holds.
///
/// KEYS: 1 item, 2 names, 3 exp. ARGV: 1 mode (`any`, `rev`, `fence`), 2 mode
/// argument, 3 name.
/// Returns `{1, deleted (0/1)}` or `{0, conflict message}`.
pub(crate) static KV_DELETE: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(format!(
        r"{KV_MODE}
local cur = redis.call('HMGET', KEYS[1], 'r', 'f')
local why = kv_conflict(ARGV[1], ARGV[2], cur[1], cur[2])
if why then
  return {{0, why}}
end
redis.call('ZREM', KEYS[2], ARGV[3])
redis.call('ZREM', KEYS[3], ARGV[3])
return {{1, redis.call('DEL', KEYS[1])}}
"
    ))
});

/// Lists live key-value items by name prefix, in name order.
///
/// KEYS: 1 names, 2 exp. ARGV: 1 item key prefix, 2 lex min, 3 lex max, 4 limit.
/// Returns `{name1, value1, revision1, ...}`.
pub(crate) static KV_LIST: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(format!(
        r"{NOW_MS}{KV_SWEEP}
kv_sweep(KEYS[1], KEYS[2], 1000)
local out = {{}}
for _, name in ipairs(redis.call('ZRANGEBYLEX', KEYS[1], ARGV[2], ARGV[3], 'LIMIT', 0, ARGV[4])) do
  local cur = redis.call('HMGET', ARGV[1] .. name, 'v', 'r')
  if cur[2] then
    out[#out + 1] = name
    out[#out + 1] = cur[1]
    out[#out + 1] = cur[2]
  else
    redis.call('ZREM', KEYS[1], name)
  end
end
return out
"
    ))
});
