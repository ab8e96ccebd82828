/**
 * The Lua scripts of the Redis tier. Each runs atomically on the node owning its keys, and
 * all keys of one script share a hash tag (one slot), so they work on Redis Cluster too.
 * Generations are integers below 2^53 (microseconds since the epoch), exact as Lua numbers.
 */

/**
 * The fleet's generation clock: strictly increasing, and never behind the server's time in
 * microseconds, so it stays ahead of every generation handed out even if the counter key
 * itself is evicted or lost. KEYS[1] = clock.
 */
export const NEXT_GENERATION = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local prev = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
local g = now
if g <= prev then g = prev + 1 end
local s = string.format('%.0f', g)
redis.call('SET', KEYS[1], s)
return s
`;

/**
 * Make an uploaded state visible: the record is written only if no delete at or after its
 * generation covers it (tombstones), no newer commit of the same cache was published,
 * and its data key holds every chunk (nothing was evicted meanwhile).
 * KEYS = heads, tombs, data. ARGV = scope field, generation, record JSON, chunk count,
 * ttl seconds (0 = keep), model id.
 * Returns { outcome, previous record or '' }.
 */
export const PUBLISH = `
local g = tonumber(ARGV[2])
local tombAll = tonumber(redis.call('HGET', KEYS[2], '*') or '-1') or -1
local tombModel = tonumber(redis.call('HGET', KEYS[2], 'm:' .. ARGV[6]) or '-1') or -1
if tombAll >= g or tombModel >= g then return {'deleted', ''} end
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if cur then
  local ok, h = pcall(cjson.decode, cur)
  if ok and type(h) == 'table' and tonumber(h.generation) and tonumber(h.generation) >= g then
    return {'superseded', ''}
  end
else
  cur = ''
end
if redis.call('HLEN', KEYS[3]) ~= tonumber(ARGV[4]) then return {'incomplete', ''} end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
local ttl = tonumber(ARGV[5])
if ttl > 0 then
  redis.call('EXPIRE', KEYS[3], ttl)
  redis.call('EXPIRE', KEYS[1], ttl)
else
  redis.call('PERSIST', KEYS[3])
end
return {'published', cur}
`;

/**
 * A delete: leave a tombstone (refusing uploads ordered before it) and remove the records
 * it covers — every scope of the key, or one model's — that are older than the delete.
 * KEYS = heads, tombs. ARGV = generation, model id ('' = every model), tombstone ttl.
 * Returns the removed records (the caller unlinks their data keys).
 */
export const REMOVE = `
local g = tonumber(ARGV[1])
local field = '*'
if ARGV[2] ~= '' then field = 'm:' .. ARGV[2] end
local prev = tonumber(redis.call('HGET', KEYS[2], field) or '-1') or -1
if g > prev then redis.call('HSET', KEYS[2], field, ARGV[1]) end
redis.call('EXPIRE', KEYS[2], tonumber(ARGV[3]))
local removed = {}
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local ok, h = pcall(cjson.decode, all[i + 1])
  local valid = ok and type(h) == 'table' and tonumber(h.generation) ~= nil
  if (not valid) or ((ARGV[2] == '' or h.modelId == ARGV[2]) and tonumber(h.generation) < g) then
    redis.call('HDEL', KEYS[1], all[i])
    table.insert(removed, all[i + 1])
  end
end
return removed
`;

/**
 * Remove one record if it is still the given generation (a state found broken, one
 * published after a delete of everything, or one evicted by kvkeep gc --remote — a commit
 * published since is newer and stays). With a second key, its data key goes in the same
 * step (it shares the heads' slot). KEYS = heads[, data]. ARGV = scope field, generation.
 * Returns 1 when it removed the record.
 */
export const DROP_IF_GENERATION = `
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if not cur then return 0 end
local ok, h = pcall(cjson.decode, cur)
if ok and type(h) == 'table' and tonumber(h.generation) == tonumber(ARGV[2]) then
  redis.call('HDEL', KEYS[1], ARGV[1])
  if KEYS[2] then redis.call('UNLINK', KEYS[2]) end
  return 1
end
return 0
`;

/**
 * Add a published state to the prefix index of its scope: for each chain key it covers,
 * the field lists the cache keys of the latest states covering it (newest first, at most
 * 4), so a deleted or expired one still leaves others to find. Values are JSON arrays of
 * strings. KEYS = prefix index. ARGV = cache key, ttl seconds (0 = keep), chain keys…
 */
export const INDEX_PREFIXES = `
for i = 3, #ARGV do
  local list = {ARGV[1]}
  local cur = redis.call('HGET', KEYS[1], ARGV[i])
  if cur then
    local ok, old = pcall(cjson.decode, cur)
    if ok and type(old) == 'table' then
      for _, k in ipairs(old) do
        if #list >= 4 then break end
        if type(k) == 'string' and k ~= ARGV[1] then table.insert(list, k) end
      end
    end
  end
  redis.call('HSET', KEYS[1], ARGV[i], cjson.encode(list))
end
local ttl = tonumber(ARGV[2])
if ttl > 0 then redis.call('EXPIRE', KEYS[1], ttl) end
return 1
`;

/** Set a key to a generation unless it already holds a later one. KEYS = key. ARGV = generation. */
export const RAISE_TO = `
local cur = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
if tonumber(ARGV[1]) > cur then redis.call('SET', KEYS[1], ARGV[1]) end
return 1
`;

/** The server's clock in milliseconds, in a script (Redis 7 replicates a script's effects, so TIME is allowed). */
const NOW_MS = `local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)`;

/**
 * An upload's check of the token chunks it names: each one present is used — its TTL
 * refreshed and its use recorded in the context's `used` sorted set (id → server time in ms)
 * — in the same step that finds it, so `kvkeep gc --remote` can never remove it between the
 * check and the upload's record. A use is a write: it reaches replicas and is seen while a
 * fork child runs (Redis does not update idle times then). KEYS = used, chunk keys (one hash
 * tag: one slot). ARGV = ttl seconds (0: none), the chunks' ids. Returns 1 (present, used) or
 * 0 (absent) per chunk.
 */
export const USE_CHUNKS = `
${NOW_MS}
local ttl = tonumber(ARGV[1])
local out = {}
local any = false
for i = 2, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    if ttl > 0 then redis.call('EXPIRE', KEYS[i], ttl) end
    redis.call('ZADD', KEYS[1], now, ARGV[i])
    out[i - 1] = 1
    any = true
  else
    out[i - 1] = 0
  end
end
if any and ttl > 0 then redis.call('EXPIRE', KEYS[1], ttl) end
return out
`;

/**
 * Store a token chunk the tier lacks (SET NX: two writers of one chunk both succeed, the
 * first one's bytes stay) and record its use. KEYS = chunk, used. ARGV = bytes, ttl seconds
 * (0: none), id. Returns 1 when this call stored it, 0 when it was there.
 */
export const PUT_CHUNK = `
${NOW_MS}
local ttl = tonumber(ARGV[2])
local set
if ttl > 0 then set = redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ttl) else set = redis.call('SET', KEYS[1], ARGV[1], 'NX') end
if not set and ttl > 0 then redis.call('EXPIRE', KEYS[1], ttl) end
redis.call('ZADD', KEYS[2], now, ARGV[3])
if ttl > 0 then redis.call('EXPIRE', KEYS[2], ttl) end
if set then return 1 end
return 0
`;

/**
 * Remove a token chunk only if nothing has used it for ARGV[1] ms: neither a recorded use (an
 * upload's, in the context's \`used\` set) nor a read or write Redis saw (its idle time; unknown
 * under an LFU policy: then it stays). KEYS = chunk, used. ARGV = min idle ms, id. Returns
 * the memory it used when removed, -1 when kept.
 */
export const DROP_IF_UNUSED = `
${NOW_MS}
local margin = tonumber(ARGV[1])
local used = redis.call('ZSCORE', KEYS[2], ARGV[2])
if used and now - tonumber(used) < margin then return -1 end
local ok, idle = pcall(redis.call, 'OBJECT', 'IDLETIME', KEYS[1])
if not ok or not idle or idle * 1000 < margin then return -1 end
local n = redis.call('MEMORY', 'USAGE', KEYS[1])
if not n then return -1 end
redis.call('UNLINK', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[2])
return n
`;
