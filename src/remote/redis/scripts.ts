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

/**
 * Remove a token chunk only if it is still unused for at least ARGV[1] seconds (an upload that
 * found it present, or a fetch, since the collector read its idle time keeps it).
 * KEYS[1] = the chunk. Returns the memory it used when removed, -1 when kept.
 */
export const DROP_IF_IDLE = `
local ok, idle = pcall(redis.call, 'OBJECT', 'IDLETIME', KEYS[1])
if not ok or not idle or idle < tonumber(ARGV[1]) then return -1 end
local n = redis.call('MEMORY', 'USAGE', KEYS[1])
redis.call('UNLINK', KEYS[1])
return n
`;
