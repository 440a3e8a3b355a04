"""Server-side Lua for the replay store: append is one atomic script, so readers never see half an episode,
a retried append is a no-op, and eviction, reservoir and byte accounting move together with the insert.

The payloads (chunks, low-dim arrays) do not go through the script: copying megabytes into Lua strings and
back costs more than the rest of an append. The store SETs them under staging keys ``P:stage:{id}:{attempt}:*``
(with a TTL) in the same pipeline, just before the script, which RENAMEs them into place (no copy) or, for a
retry, deletes them. Nothing is visible before the script runs. Not one MULTI/EXEC: with AOF on, a
transaction's megabytes pile up in one append-only buffer that Redis grows (and copies) a megabyte at a time;
plain SETs are flushed one by one. An upload cut off before the script leaves staging keys the TTL removes.

The ``#!lua`` shebang (Redis 7) makes Redis refuse the whole script up front when over maxmemory, instead of
failing half-way through it. Keys are built from a prefix passed in ARGV (the store is single-instance Redis; Redis Cluster would need hash
tags on every key of an episode, see ReplayStore's docstring).

What the script reads back for eviction and the reservoir (steps, bytes, chunks, index fields) lives in its own
hash ``P:acct:{id}``, never read from ``P:ep:*``: Redis checks a script's keys against the calling user, and an
actor's ACL user may write episodes but not read them (fleet/acl.py).
"""

APPEND = r"""#!lua
local P = ARGV[1]
local id = ARGV[2]
local meta = ARGV[3]
local n = tonumber(ARGV[4])
local nbytes = tonumber(ARGV[5])
local emb, task, ok, ver, src, robot = ARGV[6], ARGV[7], ARGV[8], ARGV[9], ARGV[10], ARGV[11]
local t = tonumber(ARGV[12])
local interventions = tonumber(ARGV[13])
local bucket = ARGV[14]
local capacity = tonumber(ARGV[15])
local reservoir_size = tonumber(ARGV[16])
local r_accept = tonumber(ARGV[17])
local r_pick = tonumber(ARGV[18])
local events_maxlen = ARGV[19]
local chunk_steps = ARGV[20]
local stage = ARGV[21]  -- the frames and low-dim arrays, SET by the same pipeline just before this script
local nchunks = tonumber(ARGV[22])
local layout = ARGV[23]  -- where each frame sits in its chunk (fleet/chunk_layout.py), '' if unknown

-- eviction bookkeeping of a stored episode (stores written before P:acct existed keep it in the episode hash)
local function acct(eid, ...)
  local f = redis.call('HMGET', P .. ':acct:' .. eid, ...)
  if not f[1] then f = redis.call('HMGET', P .. ':ep:' .. eid, ...) end
  return f
end

local function drop_stage()
  for i = 0, nchunks - 1 do redis.call('DEL', stage .. ':c:' .. i) end
  redis.call('DEL', stage .. ':low')
end

for i = -1, nchunks - 1 do
  local key = i < 0 and stage .. ':low' or stage .. ':c:' .. i
  if redis.call('EXISTS', key) == 0 then
    drop_stage()
    return redis.error_reply('ERR append: staged ' .. key .. ' missing')
  end
end
if redis.call('SADD', P .. ':seen', id) == 0 then
  drop_stage()  -- a retry: the stored (or evicted) episode stays as it is
  return 0
end

local ek = P .. ':ep:' .. id
-- RENAME moves the staged values without copying them (payloads never pass through Lua); PERSIST first, as
-- RENAME keeps the staging TTL
redis.call('PERSIST', stage .. ':low')
redis.call('RENAME', stage .. ':low', ek .. ':low')
for i = 0, nchunks - 1 do
  redis.call('PERSIST', stage .. ':c:' .. i)
  redis.call('RENAME', stage .. ':c:' .. i, ek .. ':c:' .. i)
end
redis.call('HSET', ek, 'meta', meta, 'n', n, 'bytes', nbytes, 'nchunks', nchunks, 'chunk_steps', chunk_steps,
  'emb', emb, 'task', task, 'ok', ok, 'ver', ver, 'src', src, 't', t)
if layout ~= '' then redis.call('HSET', ek, 'layout', layout) end
redis.call('HSET', P .. ':acct:' .. id, 'n', n, 'bytes', nbytes, 'nchunks', nchunks, 'emb', emb, 'task', task,
  'ok', ok, 'ver', ver, 'src', src)

local pools = {'all', 'emb:' .. emb, 'task:' .. task, 'ok:' .. ok, 'ver:' .. ver, 'src:' .. src}
local S = P .. ':stats'
for _, p in ipairs(pools) do
  redis.call('ZADD', P .. ':idx:' .. p, t, id)
  redis.call('HINCRBY', S, p .. ':episodes', 1)
  redis.call('HINCRBY', S, p .. ':steps', n)
  redis.call('HINCRBY', S, p .. ':bytes', nbytes)
end
redis.call('HINCRBY', S, 'ingested:episodes', 1)
redis.call('HINCRBY', S, 'ingested:steps', n)
redis.call('HINCRBY', S, 'ingested:bytes', nbytes)

-- success and interventions per (embodiment, task, version, robot) and per time bucket, kept for all time;
-- autonomous = a success with no supervisor step: what the policy achieved by itself
local autonomous = (tonumber(ok) == 1 and interventions == 0) and 1 or 0
local key = emb .. '|' .. task .. '|' .. ver .. '|' .. robot
local B = P .. ':stats:b:' .. bucket
redis.call('HINCRBY', B, key .. '|n', 1)
redis.call('HINCRBY', B, key .. '|ok', tonumber(ok))
redis.call('HINCRBY', B, key .. '|int', interventions)
redis.call('HINCRBY', B, key .. '|auto', autonomous)
redis.call('HINCRBY', B, key .. '|steps', n)
redis.call('HINCRBY', B, key .. '|bytes', nbytes)
redis.call('ZADD', P .. ':stats:buckets', tonumber(bucket), bucket)
local A = P .. ':stats:all'
redis.call('HINCRBY', A, key .. '|n', 1)
redis.call('HINCRBY', A, key .. '|ok', tonumber(ok))
redis.call('HINCRBY', A, key .. '|int', interventions)
redis.call('HINCRBY', A, key .. '|auto', autonomous)

-- reservoir (Algorithm R over every episode ever ingested): members are never evicted
local seen = tonumber(redis.call('HGET', S, 'ingested:episodes'))
local R = P .. ':idx:reservoir'
local in_reservoir = false
if reservoir_size > 0 then
  local size = redis.call('ZCARD', R)
  if size < reservoir_size then
    in_reservoir = true
  elseif r_accept * seen < reservoir_size then
    in_reservoir = true
    local out = redis.call('ZRANGE', R, math.floor(r_pick * size), math.floor(r_pick * size))[1]
    local out_t = redis.call('ZSCORE', R, out)
    redis.call('ZREM', R, out)
    redis.call('HSET', P .. ':ep:' .. out, 'res', 0)
    redis.call('ZADD', P .. ':idx:evictable', out_t, out)
    local out_f = acct(out, 'n', 'bytes')
    local out_n, out_b = tonumber(out_f[1]), tonumber(out_f[2])
    redis.call('HINCRBY', S, 'reservoir:episodes', -1)
    redis.call('HINCRBY', S, 'reservoir:steps', -out_n)
    redis.call('HINCRBY', S, 'reservoir:bytes', -out_b)
  end
end
if in_reservoir then
  redis.call('ZADD', R, t, id)
  redis.call('HSET', ek, 'res', 1)
  redis.call('HINCRBY', S, 'reservoir:episodes', 1)
  redis.call('HINCRBY', S, 'reservoir:steps', n)
  redis.call('HINCRBY', S, 'reservoir:bytes', nbytes)
else
  redis.call('HSET', ek, 'res', 0)
  redis.call('ZADD', P .. ':idx:evictable', t, id)
end

-- evict the oldest non-reservoir episodes until stored bytes fit the capacity
local evicted = 0
while tonumber(redis.call('HGET', S, 'all:bytes')) > capacity do
  local popped = redis.call('ZPOPMIN', P .. ':idx:evictable')
  if #popped == 0 then break end
  local vid = popped[1]
  local vk = P .. ':ep:' .. vid
  local f = acct(vid, 'n', 'bytes', 'nchunks', 'emb', 'task', 'ok', 'ver', 'src')
  local vn, vb, vc = tonumber(f[1]), tonumber(f[2]), tonumber(f[3])
  for _, p in ipairs({'all', 'emb:' .. f[4], 'task:' .. f[5], 'ok:' .. f[6], 'ver:' .. f[7], 'src:' .. f[8]}) do
    redis.call('ZREM', P .. ':idx:' .. p, vid)
    redis.call('HINCRBY', S, p .. ':episodes', -1)
    redis.call('HINCRBY', S, p .. ':steps', -vn)
    redis.call('HINCRBY', S, p .. ':bytes', -vb)
  end
  for i = 0, vc - 1 do redis.call('DEL', vk .. ':c:' .. i) end
  redis.call('DEL', vk, vk .. ':low', P .. ':acct:' .. vid)
  redis.call('HINCRBY', S, 'evicted:episodes', 1)
  redis.call('HINCRBY', S, 'evicted:bytes', vb)
  evicted = evicted + 1
end

redis.call('XADD', P .. ':events', 'MAXLEN', '~', events_maxlen, '*', 'id', id, 'emb', emb, 'task', task,
  'ok', ok, 'ver', ver, 'robot', robot, 'n', n, 'bytes', nbytes, 't', t)
return 1 + evicted
"""
