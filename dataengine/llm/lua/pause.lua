-- FleetLimiter.pause (dataengine/llm/limits.py): pause a model for the whole fleet after a 429 (the
-- later of an existing pause and the new one), or only read the pause.
--
-- KEYS: pause. ARGV: retry-after seconds ('' = only read), recovery seconds, now ('' = Redis's clock).
-- Returns the seconds the model is still paused.
local now = tonumber(ARGV[3])
if not now then local t = redis.call('TIME'); now = tonumber(t[1]) + tonumber(t[2]) / 1000000 end
local till = tonumber(redis.call('GET', KEYS[1]) or '') or 0
local retry_after = tonumber(ARGV[1])
if retry_after then
  till = math.max(till, now + retry_after)
  redis.call('SET', KEYS[1], string.format('%.17g', till), 'PX', math.ceil((till - now + tonumber(ARGV[2]) + 1) * 1000))
end
return string.format('%.17g', math.max(0, till - now))
