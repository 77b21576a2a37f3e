"""The Lua scripts that make Redis the shared store of several front ends (``--store redis://``).

Each script runs atomically in Redis, so every decision the in-memory store makes in one step is
made here in one step too: a claim checks the name's holder and the client limit, an append
takes its seqs from the one counter and trims the client's ring, and every change is added to
one stream (``logatron:changes``) that every front end reads in order and mirrors. The model
these scripts implement is ``SharedStore`` in ``tests/test_remote.py``.

Keys (all under ``logatron:``):

- ``seq`` the last seq given out; ``changeno`` the number of the last change (each entry of
  ``changes`` carries its number ``i``, so a front end sees at once when it missed some);
  ``epoch`` names this Redis's data (set by the first HELLO or BATCH into an empty Redis, and
  anew once Redis restarted: ``run`` is the run id of the Redis that set it); a front end that
  registers and finds another than its mirror was loaded from knows Redis may have lost some;
- ``changes`` the stream of changes: ``k`` the kind (``r`` ready, ``l`` logged, ``s`` set,
  ``c`` closed, ``e`` expired), ``n`` the client, ``t`` the timestamp, and for ``l`` the first
  seq ``s``, the count ``c``, the truncated flag ``x``, the form ``f`` that reads the messages
  (``logatron_core.encode_run``: nothing is parsed on the way), the front end ``o`` that sent
  the run, the run's place in that front end's batches ``q`` (``<batch>.<index>``) and the id
  ``b`` of its messages in ``bodies:<o>``; for ``s`` the key ``a`` and the value ``v``;
- ``bodies:<front end>`` the messages ``m`` of each run a front end sent, as the bytes they
  arrived in. They are kept apart from ``changes`` so that a front end, which has its own runs
  already, reads back only the others' (reading 64 KiB runs back was a third of its CPU), and
  written only while another front end is registered (``b`` is then absent): one that
  registers later loads its mirror from a snapshot taken after it registered, and a mirror
  that meets a run without its body loads anew;
- ``claims`` name -> the connection holding it (``<front end id>:<n>``); ``held:<front end>``
  the names a front end holds; ``frontends`` the front ends registered; ``frontend:<id>`` a
  front end's lease (a key with a TTL, refreshed by every batch; its value the epoch it was
  taken in); ``batch:<id>`` the number of its last batch applied (``last``; batches are applied
  in their order) and the results of the last ``BATCH_WINDOW`` (a batch sent again after a lost
  reply is not applied twice);
- ``names`` every client; ``client:<name>`` its record (``c`` connected, ``ca``/``da``
  connected/disconnected at, ``r`` lines received, ``v`` evicted, ``et`` the seq of the newest
  evicted line, ``b`` lines buffered, ``k`` lines of the oldest run already evicted);
  ``state:<name>`` its state; ``ring:<name>`` its runs' bytes and ``runs:<name>`` each run's
  ``"<first seq> <count> <timestamp> <truncated> <form>"``, oldest first; ``retained`` the
  disconnected clients scored by when they disconnected; ``config`` the deployment's limits.

Timestamps travel as the strings the front ends wrote (a Lua number would round them).
"""

__all__ = ["BATCH", "BATCH_WINDOW", "CHANGES_MAXLEN", "HELLO", "JANITOR", "SNAPSHOT"]

# Entries kept in the change stream, and in each front end's bodies (approximately: XADD
# MAXLEN ~). A front end that falls further behind reloads the whole state. A body is one run
# of lines (at most one receive, 64 KiB, of one connection), so this bounds a front end's
# bodies below ~650 MB in the worst case and to a few MB at ordinary rates; at the issue's
# 10,000 lines/s in runs of one line it still holds a whole second of changes, many times what
# a front end lags behind.
CHANGES_MAXLEN = 10_000

# How long the bodies of a front end that is gone are kept for the mirrors still reading them.
_BODIES_KEEP_SECONDS = 600
# How long a batch's record is kept for a front end that stopped sending (seconds).
_BATCH_RECORD_SECONDS = 86_400
# Results kept per front end: at least as many as it has batches in flight.
BATCH_WINDOW = 8

_PRELUDE = """
local P = 'logatron:'
local CLAIMS, RETAINED, NAMES = P .. 'claims', P .. 'retained', P .. 'names'

local function change(kind, name, stamp, ...)
  local number = redis.call('INCR', P .. 'changeno')
  redis.call('XADD', P .. 'changes', 'MAXLEN', '~', '@MAXLEN@', '*',
             'i', number, 'k', kind, 'n', name, 't', stamp, ...)
end

local function forget(name, stamp)
  redis.call('DEL', P .. 'client:' .. name, P .. 'state:' .. name,
             P .. 'ring:' .. name, P .. 'runs:' .. name)
  redis.call('ZREM', RETAINED, name)
  redis.call('SREM', NAMES, name)
  change('e', name, stamp)
end

local function expire(stamp, retention, max_retained)
  local aged = redis.call('ZRANGEBYSCORE', RETAINED, '-inf', tonumber(stamp) - retention)
  for _, name in ipairs(aged) do forget(name, stamp) end
  while redis.call('ZCARD', RETAINED) > max_retained do
    forget(redis.call('ZPOPMIN', RETAINED)[1], stamp)
  end
end

local function release(name, frontend, stamp)
  redis.call('HDEL', CLAIMS, name)
  redis.call('SREM', P .. 'held:' .. frontend, name)
  redis.call('HSET', P .. 'client:' .. name, 'c', '0', 'da', stamp)
  redis.call('ZADD', RETAINED, stamp, name)
  change('c', name, stamp)
end

local function release_frontend(frontend, stamp)
  local prefix = frontend .. ':'
  for _, name in ipairs(redis.call('SMEMBERS', P .. 'held:' .. frontend)) do
    local holder = redis.call('HGET', CLAIMS, name)
    if holder and string.sub(holder, 1, #prefix) == prefix then
      release(name, frontend, stamp)
    end
  end
  redis.call('DEL', P .. 'held:' .. frontend)
  redis.call('SREM', P .. 'frontends', frontend)
  redis.call('EXPIRE', P .. 'bodies:' .. frontend, @BODIES_KEEP@)
  if redis.call('SCARD', P .. 'frontends') == 1 then  -- the one left writes no bodies now,
    local alone = redis.call('SRANDMEMBER', P .. 'frontends')  -- and none reads its old ones
    redis.call('EXPIRE', P .. 'bodies:' .. alone, @BODIES_KEEP@)
  end
end

local function not_held(name)
  return {'name-taken', name .. ' is connected elsewhere now'}
end

local function claim(frontend, conn, name, stamp, limits)
  local holder = redis.call('HGET', CLAIMS, name)
  if holder == conn then return nil end
  if holder then
    local other = string.match(holder, '^(.*):')
    if redis.call('EXISTS', P .. 'frontend:' .. other) == 1 then
      return {'name-taken', name .. ' is already connected'}
    end
    release_frontend(other, stamp)  -- its lease expired: its names are free
    expire(stamp, limits.retention, limits.max_retained)
  end
  if redis.call('HLEN', CLAIMS) >= limits.max_clients then
    return {'too-many-clients',
            'the server holds its limit of ' .. limits.max_clients_text .. ' clients'}
  end
  redis.call('HSET', CLAIMS, name, conn)
  redis.call('SADD', P .. 'held:' .. frontend, name)
  local key = P .. 'client:' .. name
  if redis.call('SADD', NAMES, name) == 1 then
    redis.call('HSET', key, 'c', '1', 'ca', stamp, 'r', '0', 'v', '0', 'et', '0', 'b', '0',
               'k', '0')
  else
    redis.call('HSET', key, 'c', '1', 'ca', stamp)
    redis.call('HDEL', key, 'da')
    redis.call('ZREM', RETAINED, name)
  end
  change('r', name, stamp)
  return nil
end

local function append(frontend, place, conn, name, stamp, truncated, count, messages, form,
                      buffer_size)
  if redis.call('HGET', CLAIMS, name) ~= conn then return not_held(name) end
  local first = redis.call('INCRBY', P .. 'seq', count) - count + 1
  local key, runs, ring = P .. 'client:' .. name, P .. 'runs:' .. name, P .. 'ring:' .. name
  redis.call('RPUSH', ring, messages)
  redis.call('RPUSH', runs, string.format('%d %d %s %s %s', first, count, stamp, truncated, form))
  redis.call('HINCRBY', key, 'r', count)
  local buffered = redis.call('HINCRBY', key, 'b', count)
  if buffered > buffer_size then
    local over = buffered - buffer_size
    local skip = tonumber(redis.call('HGET', key, 'k'))
    local through = 0
    redis.call('HINCRBY', key, 'v', over)
    while over > 0 do
      local head_first, head_count = string.match(redis.call('LINDEX', runs, 0), '^(%d+) (%d+)')
      head_first, head_count = tonumber(head_first), tonumber(head_count)
      if head_count - skip <= over then
        redis.call('LPOP', runs)
        redis.call('LTRIM', ring, 1, -1)  -- not LPOP: that would copy the run into Lua
        over = over - (head_count - skip)
        skip = 0
        through = head_first + head_count - 1
      else
        skip = skip + over
        through = head_first + skip - 1
        over = 0
      end
    end
    redis.call('HSET', key, 'b', buffer_size, 'k', skip,
               'et', string.format('%d', through))
  end
  local first_text, count_text = string.format('%d', first), string.format('%d', count)
  if redis.call('SCARD', P .. 'frontends') < 2 then  -- no other front end: no reader of bodies
    change('l', name, stamp, 's', first_text, 'c', count_text, 'x', truncated, 'f', form,
           'o', frontend, 'q', place)
    return nil
  end
  local body = redis.call('XADD', P .. 'bodies:' .. frontend, 'MAXLEN', '~', '@MAXLEN@', '*',
                         'm', messages)
  change('l', name, stamp, 's', first_text, 'c', count_text, 'x', truncated, 'f', form,
         'o', frontend, 'q', place, 'b', body)
  return nil
end

local function set_key(conn, name, stamp, key, value, limits)
  if redis.call('HGET', CLAIMS, name) ~= conn then return not_held(name) end
  local state = P .. 'state:' .. name
  if redis.call('HEXISTS', state, key) == 0
      and redis.call('HLEN', state) >= limits.max_keys then
    return {'too-many-keys',
            name .. ' holds its limit of ' .. limits.max_keys_text .. ' keys'}
  end
  redis.call('HSET', state, key, value)
  change('s', name, stamp, 'a', key, 'v', value)
  return nil
end

-- The epoch of Redis's data. A new one when there is none yet, or when Redis restarted (its run
-- id changed): a Redis that loaded its data from disk may have lost its last changes, and the
-- change numbers the mirrors reached mean nothing there, even though its keys came back.
local function current_epoch()
  local run = string.match(redis.call('INFO', 'server'), 'run_id:(%x+)')
  local epoch = redis.call('GET', P .. 'epoch')
  if epoch and redis.call('GET', P .. 'run') == run then return epoch end
  local now = redis.call('TIME')
  epoch = run .. ':' .. now[1] .. '.' .. now[2]
  redis.call('SET', P .. 'epoch', epoch)
  redis.call('SET', P .. 'run', run)
  return epoch
end

local function limits_from(first)
  return {
    buffer_size = tonumber(ARGV[first]),
    max_clients = tonumber(ARGV[first + 1]), max_clients_text = ARGV[first + 1],
    max_keys = tonumber(ARGV[first + 2]), max_keys_text = ARGV[first + 2],
    retention = tonumber(ARGV[first + 3]),
    max_retained = tonumber(ARGV[first + 4]),
  }
end
""".replace("@MAXLEN@", str(CHANGES_MAXLEN))
_PRELUDE = _PRELUDE.replace("@BODIES_KEEP@", str(_BODIES_KEEP_SECONDS))

# ARGV: front end id, batch number, lease in ms, the five limits (buffer size, max clients,
# max state keys, retention seconds, max retained), then the commands: ``C conn name stamp``,
# ``A conn name stamp truncated count messages form``, ``S conn name stamp key value``,
# ``R conn name stamp``. Returns ``{'ok', changeno, index, code, detail, ...}`` (a refusal per
# refused command, by its index), ``{'lease'}`` when the front end's lease had expired (its
# names may have been released) or was taken in another epoch (Redis restarted), or ``{'gap'}``
# when the batch before it was not applied: it registers again, then sends the batches again.
BATCH = (
    _PRELUDE
    + """
local frontend, batch = ARGV[1], tonumber(ARGV[2])
local record = P .. 'batch:' .. frontend
local last = tonumber(redis.call('HGET', record, 'last') or '0')
if batch <= last then
  local done = redis.call('HGET', record, ARGV[2])
  if done then return cjson.decode(done) end
  return {'ok', redis.call('GET', P .. 'changeno') or '0'}
end
-- Batches are applied in the order they are numbered: one whose predecessor was not applied
-- (it failed, say with NOSCRIPT after SCRIPT FLUSH, while this one found the script loaded
-- again) waits for it, or it would be confirmed by the predecessor's replay above, unapplied.
if batch ~= last + 1 then return {'gap'} end
-- A lease holds the epoch it was taken in: in another (Redis restarted), register again.
local lease = P .. 'frontend:' .. frontend
if redis.call('GET', lease) ~= current_epoch() then return {'lease'} end
redis.call('PEXPIRE', lease, ARGV[3])
local limits = limits_from(4)
local refusals = {}
local i, index = 9, 0
while i <= #ARGV do
  local kind, conn, name, stamp = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local refusal = nil
  if kind == 'A' then
    refusal = append(frontend, ARGV[2] .. '.' .. index, conn, name, stamp, ARGV[i + 4],
                     tonumber(ARGV[i + 5]), ARGV[i + 6], ARGV[i + 7], limits.buffer_size)
    i = i + 8
  elseif kind == 'S' then
    refusal = set_key(conn, name, stamp, ARGV[i + 4], ARGV[i + 5], limits)
    i = i + 6
  elseif kind == 'C' then
    refusal = claim(frontend, conn, name, stamp, limits)
    i = i + 4
  else
    if redis.call('HGET', CLAIMS, name) == conn then
      release(name, frontend, stamp)
      expire(stamp, limits.retention, limits.max_retained)
    end
    i = i + 4
  end
  if refusal then
    table.insert(refusals, index)
    table.insert(refusals, refusal[1])
    table.insert(refusals, refusal[2])
  end
  index = index + 1
end
local result = {'ok', redis.call('GET', P .. 'changeno') or '0'}
for _, item in ipairs(refusals) do table.insert(result, item) end
redis.call('HSET', record, 'last', ARGV[2], ARGV[2], cjson.encode(result))
redis.call('HDEL', record, string.format('%d', batch - @WINDOW@))
redis.call('EXPIRE', record, @RECORD@)
return result
""".replace("@RECORD@", str(_BATCH_RECORD_SECONDS)).replace("@WINDOW@", str(BATCH_WINDOW))
)

# Registers a front end (at start, and again after its lease expired or Redis restarted).
# ARGV: front end id, lease in ms, the five limits, the highest seq it has seen, the number of
# the last batch it needs applied no more (the one before its first unacknowledged: those were
# applied, or lost with Redis's data), then the claims it holds (``conn name stamp``), claimed
# again. Returns ``{'ok', changeno, epoch, index, code, detail, ...}`` (the claims refused), or
# ``{'config', <the five stored limits>}`` when live front ends use other limits (the limits are
# the deployment's: when no front end is live, the new ones replace them).
HELLO = (
    _PRELUDE
    + """
local frontend = ARGV[1]
local fields = {'buffer_size', 'max_clients', 'max_state_keys', 'retention_seconds',
                'max_retained'}
local stored = redis.call('HMGET', P .. 'config', unpack(fields))
local differs = false
for n = 1, 5 do
  if stored[n] and stored[n] ~= ARGV[n + 2] then differs = true end
end
if differs then
  for _, other in ipairs(redis.call('SMEMBERS', P .. 'frontends')) do
    if other ~= frontend and redis.call('EXISTS', P .. 'frontend:' .. other) == 1 then
      return {'config', stored[1], stored[2], stored[3], stored[4], stored[5]}
    end
  end
end
for n = 1, 5 do redis.call('HSET', P .. 'config', fields[n], ARGV[n + 2]) end
local epoch = current_epoch()
redis.call('SET', P .. 'frontend:' .. frontend, epoch, 'PX', ARGV[2])
redis.call('SADD', P .. 'frontends', frontend)
redis.call('PERSIST', P .. 'bodies:' .. frontend)  -- kept while it lives, even if it lapsed
if redis.call('SCARD', P .. 'frontends') >= 2 then  -- each has a reader again (see release)
  for _, other in ipairs(redis.call('SMEMBERS', P .. 'frontends')) do
    redis.call('PERSIST', P .. 'bodies:' .. other)
  end
end
if tonumber(redis.call('GET', P .. 'seq') or '0') < tonumber(ARGV[8]) then
  redis.call('SET', P .. 'seq', ARGV[8])  -- seqs are never given twice, even by a new Redis
end
local record = P .. 'batch:' .. frontend
if tonumber(redis.call('HGET', record, 'last') or '0') < tonumber(ARGV[9]) then
  redis.call('HSET', record, 'last', ARGV[9])  -- never lowered: a batch is not applied twice
  redis.call('EXPIRE', record, @RECORD@)
end
local limits = limits_from(3)
local result = {'ok', '0', epoch}
local i, index = 10, 0
while i <= #ARGV do
  local refusal = claim(frontend, ARGV[i], ARGV[i + 1], ARGV[i + 2], limits)
  if refusal then
    table.insert(result, index)
    table.insert(result, refusal[1])
    table.insert(result, refusal[2])
  end
  i, index = i + 3, index + 1
end
result[2] = redis.call('GET', P .. 'changeno') or '0'
return result
""".replace("@RECORD@", str(_BATCH_RECORD_SECONDS))
)

# Releases the names of front ends whose lease expired and forgets the clients retained past
# the retention. ARGV: now (a timestamp), retention seconds, max retained.
JANITOR = (
    _PRELUDE
    + """
for _, other in ipairs(redis.call('SMEMBERS', P .. 'frontends')) do
  if redis.call('EXISTS', P .. 'frontend:' .. other) == 0 then
    release_frontend(other, ARGV[1])
  end
end
expire(ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]))
return redis.call('GET', P .. 'changeno') or '0'
"""
)

# Everything a new mirror needs, as of one instant: ``{changeno, seq, last stream id, retained
# names (oldest first), epoch (false if none), {name, record, state, runs, ring}...}``.
SNAPSHOT = """
local P = 'logatron:'
local last = redis.call('XREVRANGE', P .. 'changes', '+', '-', 'COUNT', 1)
local result = {redis.call('GET', P .. 'changeno') or '0', redis.call('GET', P .. 'seq') or '0',
                last[1] and last[1][1] or '0-0', redis.call('ZRANGE', P .. 'retained', 0, -1),
                redis.call('GET', P .. 'epoch')}
for _, name in ipairs(redis.call('SMEMBERS', P .. 'names')) do
  table.insert(result, {name, redis.call('HGETALL', P .. 'client:' .. name),
                        redis.call('HGETALL', P .. 'state:' .. name),
                        redis.call('LRANGE', P .. 'runs:' .. name, 0, -1),
                        redis.call('LRANGE', P .. 'ring:' .. name, 0, -1)})
end
return result
"""
