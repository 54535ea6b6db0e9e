-- Fair concurrency pool of one task (task_concurrency_*): the state every step shares, and
-- its moves. Called as `local P = fair_pool(KEYS, ARGV)`; returns a table of functions.
-- Every key is under the task's one hash tag, so one script sees every key's waiters.
-- KEYS[1] holders ZSET: member "<kid>|<token>", score = lease end (server ms); a grant
--         (a slot handed to a waiter whose message is on its way) has token "g:<ticket>"
-- KEYS[2] HASH kid -> slots held (runs and grants) under that key
-- KEYS[3] waiters ZSET, all scores 0, member "<kid>|<seq, 12 digits>|<ticket>": lexical
--         order is first come, first served within each key
-- KEYS[4] HASH ticket -> "<deadline ms>|<seq>|<grants so far>|<message JSON>"
-- KEYS[5] ZSET kid -> pass of the keys that have waiters and a free slot of their own (the
--         next grant goes to the first: stride scheduling)
-- KEYS[6] HASH seq (last ticket number), vt (pass of the last grant: where keys join)
-- KEYS[7] HASH kid -> weight (configuration: no TTL)
-- KEYS[8] ZSET ticket -> until (ms): tickets that ran after more than one grant, so a
--         second copy of their message is dropped
-- KEYS[9] HASH kid -> pass of every key that has waiters
-- ARGV[1] run token ('' for the pump), ARGV[2] kid, ARGV[3] lease (ms), ARGV[4] limit per
-- key, ARGV[5] total (0: none), ARGV[6] queued TTL (ms), ARGV[7] grant lease (ms),
-- ARGV[8] mode, ARGV[9] ticket the message carries (''), ARGV[10] message to park (''),
-- ARGV[11] max waiting per key (0: none), ARGV[12] ticket of the message to park
-- retry: safe (defines functions only)
local P = {}
local t = redis.call('TIME')
P.now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
P.limit = tonumber(ARGV[4])
P.total = tonumber(ARGV[5])
P.queued = tonumber(ARGV[6])
P.grant_ms = tonumber(ARGV[7])
local H, N, W, M, S, META, WT, USED, PASS = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5],
  KEYS[6], KEYS[7], KEYS[8], KEYS[9]

local function ms(n)
  return string.format('%d', n)
end
P.ms = ms

function P.running(kid)
  return tonumber(redis.call('HGET', N, kid) or '0')
end

function P.held()
  return redis.call('ZCARD', H)
end

-- a key is ready (in the round) while it has waiters and a free slot of its own
local function refresh(kid)
  local pass = redis.call('HGET', PASS, kid)
  if pass and P.running(kid) < P.limit then
    redis.call('ZADD', S, pass, kid)
  else
    redis.call('ZREM', S, kid)
  end
end

function P.add_holder(kid, token, lease)
  if redis.call('ZADD', H, ms(P.now + lease), kid .. '|' .. token) == 1 then
    redis.call('HINCRBY', N, kid, 1)
    refresh(kid)
  end
end

function P.drop_holder(kid, token)
  if redis.call('ZREM', H, kid .. '|' .. token) == 0 then
    return 0
  end
  if redis.call('HINCRBY', N, kid, -1) <= 0 then
    redis.call('HDEL', N, kid)
  end
  refresh(kid)
  return 1
end

-- kids never hold '|' or '}' (they are percent-encoded), so this range is one key's waiters
function P.first_waiter(kid)
  return redis.call('ZRANGEBYLEX', W, '[' .. kid .. '|', '(' .. kid .. '}', 'LIMIT', 0, 1)[1]
end

function P.waiting(kid)
  return redis.call('ZLEXCOUNT', W, '[' .. kid .. '|', '(' .. kid .. '}')
end

function P.body(ticket)
  local raw = redis.call('HGET', M, ticket)
  if not raw then
    return nil
  end
  local a = string.find(raw, '|', 1, true)
  local b = string.find(raw, '|', a + 1, true)
  local c = string.find(raw, '|', b + 1, true)
  return tonumber(string.sub(raw, 1, a - 1)), string.sub(raw, a + 1, b - 1),
    tonumber(string.sub(raw, b + 1, c - 1)), string.sub(raw, c + 1)
end

local function put_body(ticket, deadline, seq, grants, message)
  redis.call('HSET', M, ticket, ms(deadline) .. '|' .. seq .. '|' .. grants .. '|' .. message)
end

-- a key that starts waiting joins the round at the current virtual time: not starved by
-- keys that waited long, not favoured over them
local function activate(kid)
  if redis.call('HSETNX', PASS, kid, redis.call('HGET', META, 'vt') or '0') == 1 then
    refresh(kid)
  end
end

function P.park(kid, ticket, message)
  local seq = string.format('%012d', redis.call('HINCRBY', META, 'seq', 1))
  redis.call('ZADD', W, 0, kid .. '|' .. seq .. '|' .. ticket)
  put_body(ticket, P.now + P.queued, seq, 0, message)
  activate(kid)
end

-- leases that ended: a run's slot comes back; a grant that was never used puts its
-- waiter back in its own place (its seq), to be granted again
function P.sweep()
  local ended = redis.call('ZRANGEBYSCORE', H, '-inf', ms(P.now), 'LIMIT', 0, 200)
  for _, member in ipairs(ended) do
    local cut = string.find(member, '|', 1, true)
    local kid, token = string.sub(member, 1, cut - 1), string.sub(member, cut + 1)
    P.drop_holder(kid, token)
    if string.sub(token, 1, 2) == 'g:' then
      local ticket = string.sub(token, 3)
      local _, seq = P.body(ticket)
      if seq then
        redis.call('ZADD', W, 0, kid .. '|' .. seq .. '|' .. ticket)
        activate(kid)
      end
    end
  end
  redis.call('ZREMRANGEBYSCORE', USED, '-inf', ms(P.now))
end

-- hand free slots to waiters (weighted round robin across keys, FIFO within one);
-- appends each granted waiter's message to `out` (at most `max` grants)
function P.grant(out, max)
  local granted = 0
  while granted < max do
    if P.total > 0 and P.held() >= P.total then
      break
    end
    local top = redis.call('ZRANGE', S, 0, 0, 'WITHSCORES')
    if #top == 0 then
      break
    end
    local kid, pass = top[1], top[2]
    local member = P.first_waiter(kid)
    if not member then
      redis.call('HDEL', PASS, kid)
      redis.call('ZREM', S, kid)
    else
      redis.call('ZREM', W, member)
      local ticket = string.sub(member, string.len(kid) + 15)
      local deadline, seq, grants, message = P.body(ticket)
      local live = deadline and deadline > P.now
      if live then
        put_body(ticket, deadline, seq, grants + 1, message)
        out[#out + 1] = message
        granted = granted + 1
        redis.call('HSET', META, 'vt', pass)
        local weight = tonumber(redis.call('HGET', WT, kid) or '1') or 1
        redis.call('HSET', PASS, kid, string.format('%.17g', tonumber(pass) + 1 / weight))
      else
        redis.call('HDEL', M, ticket) -- parked past the queued TTL: dropped
      end
      if not P.first_waiter(kid) then
        redis.call('HDEL', PASS, kid)
      end
      if live then
        P.add_holder(kid, 'g:' .. ticket, P.grant_ms)
      end
      refresh(kid)
    end
  end
  return out
end

-- a ticket that ran after several grants: copies of its message are dropped for a while
function P.spend(ticket, grants)
  redis.call('HDEL', M, ticket)
  if grants and grants > 1 then
    redis.call('ZADD', USED, ms(P.now + P.queued), ticket)
  end
end

-- every transient key lives on for the queued TTL past its last use (weights stay)
function P.keep()
  local at = ms(P.now + P.queued + math.max(tonumber(ARGV[3]), P.grant_ms))
  for _, key in ipairs({H, N, W, M, S, META, USED, PASS}) do
    redis.call('PEXPIREAT', key, at)
  end
end

return P
