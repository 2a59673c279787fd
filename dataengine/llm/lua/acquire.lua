-- FleetLimiter.acquire (dataengine/llm/limits.py): one GCRA step over a model's RPM and TPM state
-- together, so a call takes from both limits or from neither; reads Redis's clock unless told 'now'.
-- With a tenant (a workspace of a tier, named 'weight|tier|tenant'), the tenants that asked within the
-- last active seconds share the model's rate: the tiers present by weight, a tier's part equally
-- between its tenants. Each also keeps to its share in a state of its own, so a tenant with many
-- calls waiting cannot take another's part; a tenant alone keeps to the model's state only.
--
-- KEYS: rpm state, tpm state, pause, tenants (sorted set), the tenant's rpm state, its tpm state.
-- ARGV: seconds per request and burst (s), the same for tokens (0 = no limit), tokens, recovery start,
-- recovery seconds, now ('' = Redis's clock), tenant ('' = none), active seconds.
-- Returns {admitted, wait, tpm slot end, tpm cut total, seconds per token} (numbers as strings).
local function fmt(x) return string.format('%.17g', x) end
local now = tonumber(ARGV[8])
if not now then local t = redis.call('TIME'); now = tonumber(t[1]) + tonumber(t[2]) / 1000000 end
local share = 1
local tenant = ARGV[9]
if tenant and tenant ~= '' then
  local active = tonumber(ARGV[10])
  redis.call('ZADD', KEYS[4], now, tenant)
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now - active)
  redis.call('PEXPIRE', KEYS[4], math.ceil(active * 1000) + 1000)
  local weights, counts, total = {}, {}, 0
  for _, m in ipairs(redis.call('ZRANGE', KEYS[4], 0, -1)) do
    local w, t = string.match(m, '^([^|]*)|([^|]*)|')
    if t == nil then w, t = '1', m end
    if weights[t] == nil then
      weights[t] = tonumber(w) or 1
      counts[t] = 0
      total = total + weights[t]
    end
    counts[t] = counts[t] + 1
  end
  local _, mine = string.match(tenant, '^([^|]*)|([^|]*)|')
  if mine == nil then mine = tenant end
  share = weights[mine] / total / counts[mine]
end
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
local rpm_i, rpm_b, tpm_i, tpm_b = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local tokens = tonumber(ARGV[5])
local rpm_tat, rpm_cost, rpm_wait = plan(KEYS[1], rpm_i, rpm_b, 1)
local tpm_tat, tpm_cost, tpm_wait = plan(KEYS[2], tpm_i, tpm_b, tokens)
local wait = math.max(rpm_wait, tpm_wait)
-- A tenant's own state: its share of the rate, the same burst in seconds (at least one unit's worth).
local mine_rpm_tat, mine_rpm_cost, mine_tpm_tat, mine_tpm_cost
if share < 1 then
  local w1, w2
  mine_rpm_tat, mine_rpm_cost, w1 = plan(KEYS[5], rpm_i / share, math.max(rpm_b, rpm_i / share), 1)
  mine_tpm_tat, mine_tpm_cost, w2 = plan(KEYS[6], tpm_i / share, math.max(tpm_b, tpm_i / share), tokens)
  wait = math.max(wait, w1, w2)
end
if wait > 1e-9 then return {'0', fmt(wait)} end
local function take(key, tat, cost)
  local new_tat = math.max(tat, now) + cost
  redis.call('HSET', key, 'tat', fmt(new_tat))
  redis.call('PEXPIRE', key, math.ceil((new_tat - now + window) * 1000))
  return new_tat
end
if rpm_tat then take(KEYS[1], rpm_tat, rpm_cost) end
if mine_rpm_tat then take(KEYS[5], mine_rpm_tat, mine_rpm_cost) end
if mine_tpm_tat then take(KEYS[6], mine_tpm_tat, mine_tpm_cost) end
if not tpm_tat then return {'1', '0'} end
local slot_end = take(KEYS[2], tpm_tat, tpm_cost)
return {'1', '0', fmt(slot_end), redis.call('HGET', KEYS[2], 'cut') or '0', fmt(tpm_i / factor)}
