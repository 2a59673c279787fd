-- FleetLimiter.settle (dataengine/llm/limits.py): correct a call's TPM reservation by its real usage;
-- a refund gives back only the part of its backlog that has not yet elapsed.
--
-- KEYS: tpm state. ARGV: tokens to charge (negative: refund), seconds per token, the call's slot
-- end, the cut total when it was admitted, now ('' = Redis's clock). Returns the seconds applied.
local now = tonumber(ARGV[5])
if not now then local t = redis.call('TIME'); now = tonumber(t[1]) + tonumber(t[2]) / 1000000 end
local delta, per_token = tonumber(ARGV[1]), tonumber(ARGV[2])
local tat = tonumber(redis.call('HGET', KEYS[1], 'tat') or '')
local cut = tonumber(redis.call('HGET', KEYS[1], 'cut') or '') or 0
local change
if delta > 0 then
  change = delta * per_token
  tat = math.max(tat or now, now) + change
else
  if not tat then return '0' end
  local slot_end = tonumber(ARGV[3]) - math.max(0, cut - tonumber(ARGV[4]))
  change = math.min(-delta * per_token, slot_end - now, tat - now)
  if change <= 0 then return '0' end
  tat = tat - change
  cut = cut + change
  change = -change
end
redis.call('HSET', KEYS[1], 'tat', string.format('%.17g', tat), 'cut', string.format('%.17g', cut))
redis.call('PEXPIRE', KEYS[1], math.ceil((tat - now + 60) * 1000))
return string.format('%.17g', change)
