-- FleetLimiter.acquire (dataengine/llm/limits.py): one GCRA step over a model's RPM and TPM state
-- together, so a call takes from both limits or from neither; reads Redis's clock unless told 'now'.
--
-- KEYS: rpm state, tpm state, pause. ARGV: seconds per request and burst (s), the same for tokens
-- (0 = no limit), tokens, recovery start, recovery seconds, now ('' = Redis's clock).
-- Returns {admitted, wait, tpm slot end, tpm cut total, seconds per token} (numbers as strings).
local function fmt(x) return string.format('%.17g', x) end
local now = tonumber(ARGV[8])
if not now then local t = redis.call('TIME'); now = tonumber(t[1]) + tonumber(t[2]) / 1000000 end
local paused = tonumber(redis.call('GET', KEYS[3]) or '')
if paused and now < paused then return {'0', fmt(paused - now)} end
local factor, start, ramp = 1, tonumber(ARGV[6]), tonumber(ARGV[7])
if paused and ramp > 0 and now < paused + ramp then factor = start + (1 - start) * (now - paused) / ramp end
local window = 60
local function plan(key, interval, burst, units)
  if interval <= 0 then return nil, 0, 0 end
  local tat = tonumber(redis.call('HGET', key, 'tat') or '') or (now - 3600)
  local cost = units * interval / factor
  return tat, cost, tat - burst + math.min(cost, burst + window) - now
end
local rpm_tat, rpm_cost, rpm_wait = plan(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), 1)
local tpm_tat, tpm_cost, tpm_wait = plan(KEYS[2], tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]))
local wait = math.max(rpm_wait, tpm_wait)
if wait > 1e-9 then return {'0', fmt(wait)} end
local function take(key, tat, cost)
  local new_tat = math.max(tat, now) + cost
  redis.call('HSET', key, 'tat', fmt(new_tat))
  redis.call('PEXPIRE', key, math.ceil((new_tat - now + window) * 1000))
  return new_tat
end
if rpm_tat then take(KEYS[1], rpm_tat, rpm_cost) end
if not tpm_tat then return {'1', '0'} end
local slot_end = take(KEYS[2], tpm_tat, tpm_cost)
return {'1', '0', fmt(slot_end), redis.call('HGET', KEYS[2], 'cut') or '0', fmt(tonumber(ARGV[3]) / factor)}
