-- FleetLimiter.pause (dataengine/llm/limits.py): pause a model for the whole fleet after a 429 (the
-- later of an existing pause and the new one), or only read the pause. A pause also spends the
-- model's burst: when it ends, calls go at the model's rate, not all at once into a provider whose
-- own bucket is about empty.
--
-- KEYS: pause, rpm state, tpm state. ARGV: retry-after seconds ('' = only read), recovery seconds,
-- now ('' = Redis's clock), then seconds per request and burst (s), the same for tokens (0 = no limit;
-- only when pausing). Returns the seconds the model is still paused.
local now = tonumber(ARGV[3])
if not now then local t = redis.call('TIME'); now = tonumber(t[1]) + tonumber(t[2]) / 1000000 end
local till = tonumber(redis.call('GET', KEYS[1]) or '') or 0
local retry_after = tonumber(ARGV[1])
local function fmt(x) return string.format('%.17g', x) end
if retry_after then
  till = math.max(till, now + retry_after)
  redis.call('SET', KEYS[1], fmt(till), 'PX', math.ceil((till - now + tonumber(ARGV[2]) + 1) * 1000))
  for i, key in ipairs({KEYS[2], KEYS[3]}) do
    local interval, burst = tonumber(ARGV[2 + 2 * i]) or 0, tonumber(ARGV[3 + 2 * i]) or 0
    if interval > 0 then
      local tat = math.max(tonumber(redis.call('HGET', key, 'tat') or '') or 0, till + burst - interval)
      redis.call('HSET', key, 'tat', fmt(tat))
      redis.call('PEXPIRE', key, math.ceil((tat - now + 60) * 1000))
    end
  end
end
return fmt(math.max(0, till - now))
