-- The engine's SQL written as text, each statement under a name (read once by dataengine.infra.queries).
--
-- Format: a header line "-- name: <name>", then comment lines saying what the statement is for and
-- why it is written so, then the statement, up to the next header. Values are always bound
-- parameters (:name). A {placeholder} is filled by dataengine.infra.queries.statement with SQL the engine
-- makes itself, never with a value: a job's own tables ({runs}, {steps}, {results}: quoted
-- identifiers from the job registry), a CTE's name, a column list generated from a job's model, or
-- another fragment of this file. Statuses are written as literals (they match the partial indexes
-- of the run tables); tests/unit/test_queries.py checks each is a RunStatus.
-- Fragments (an expression or a CTE used inside a larger statement) are marked "Fragment:".


-- name: checkpoint
-- Record finished steps and advance the run row, in one statement fenced by the claim's token
-- (dataengine.engine.runs.checkpoint). The rows arrive as one JSON array, so the SQL never changes with the
-- batch size and the server plans it once. "fenced" locks the run row only if it is still this
-- claim's; the insert reads from it, so a stale worker inserts nothing even if its caller commits.
-- {job_rows}: the job's own statement over "inserted" (Job.checkpoint_sql) as a CTE, or nothing;
-- data-modifying CTEs always run. {result_columns}, {result_values}, {result_types}: the result
-- table's columns, generated from its model (dataengine.engine.runs.json_rows_sql).
WITH fenced AS (
    SELECT id FROM {runs}
    WHERE id = :id AND fencing_token = :token AND status = 'running'
    FOR UPDATE
), inserted AS (
    INSERT INTO {results} ({result_columns})
    SELECT {result_values} FROM jsonb_to_recordset(CAST(:rows AS jsonb)) AS x({result_types})
    WHERE EXISTS (SELECT 1 FROM fenced)
    ON CONFLICT DO NOTHING
    RETURNING *
),{job_rows} added AS (
    SELECT count(*) AS n, COALESCE(sum(prompt_tokens), 0) AS prompt_tokens,
           COALESCE(sum(completion_tokens), 0) AS completion_tokens, COALESCE(sum(cost_usd), 0) AS cost_usd
    FROM inserted
)
UPDATE {runs} SET
    completed_steps = {runs}.completed_steps + added.n,
    current_query_index = :next_index,
    in_flight_steps = CAST(:in_flight AS integer[]),
    progress_pct = LEAST(100, round(({runs}.completed_steps + added.n) * 100.0
                                    / GREATEST({runs}.total_steps, 1), 2)),
    prompt_tokens = {runs}.prompt_tokens + added.prompt_tokens,
    completion_tokens = {runs}.completion_tokens + added.completion_tokens,
    cost_usd = {runs}.cost_usd + added.cost_usd,
    eta_s = :eta_s,
    stalled_at = CASE WHEN added.n > 0 THEN NULL ELSE {runs}.stalled_at END,
    last_updated_at = now()
FROM added, fenced
WHERE {runs}.id = fenced.id
RETURNING {runs}.completed_steps, {runs}.cancel_requested

-- name: checkpoint_job_rows
-- Fragment of checkpoint: the job's own statement (Job.checkpoint_sql) as one more CTE.
 job_rows AS ({job_sql}),


-- name: finish_run
-- Move an active run to a final status and free its lease, with its event (completed, failed,
-- cancelled), in one statement (dataengine.engine.runs.finish_run): a run's last write is on every run's
-- path. With :token, only if the run is still that claim's. A NULL :summary leaves the column as is.
WITH ended AS (
    UPDATE {runs} SET status = CAST(:status AS text), finished_at = now(), last_updated_at = now(),
        lease_owner = NULL, lease_expires_at = NULL, in_flight_steps = '{}', error_message = :error,
        eta_s = CASE WHEN CAST(:status AS text) = 'completed' THEN 0 END,
        progress_pct = CASE WHEN CAST(:status AS text) = 'completed' THEN 100 ELSE progress_pct END,
        summary = COALESCE(CAST(:summary AS jsonb), summary), stalled_at = NULL
    WHERE id = :id AND status IN ('queued', 'running')
      AND (CAST(:token AS bigint) IS NULL OR fencing_token = CAST(:token AS bigint))
    RETURNING *
), logged AS (
    INSERT INTO run_events (run_id, job, event, worker, fencing_token, step_index, detail)
    SELECT ended.id, CAST(:job_key AS text), CAST(:status AS text), CAST(:worker AS text), ended.fencing_token,
           ended.current_query_index,
           COALESCE(CAST(:error AS text), ended.completed_steps || '/' || ended.total_steps || ' steps recorded')
    FROM ended
)
SELECT count(*) FROM ended


-- name: create_run
-- Insert a run (the job's own columns and the engine's), its steps, which arrive as one JSON array,
-- and its "submitted" event: one statement, so a submit is one round trip
-- (dataengine.engine.submitting). ON CONFLICT on the idempotency key: a repeated submit inserts nothing
-- and finds the run that exists. {run_columns}, {run_values}: the run's columns and what each is
-- (bound parameters, and now() for the lease); {step_columns}, {step_values}, {step_types}: the
-- step table's own columns, generated from its model.
WITH run AS (
    INSERT INTO {runs} ({run_columns}) VALUES ({run_values})
    ON CONFLICT (idempotency_key) DO NOTHING
    RETURNING *
), steps AS (
    INSERT INTO {steps} (run_id, query_index, {step_columns})
    SELECT run.id, x.query_index, {step_values}
    FROM run, jsonb_to_recordset(CAST(:steps AS jsonb)) AS x(query_index integer, {step_types})
), logged AS (
    INSERT INTO run_events (run_id, job, event, worker, fencing_token, step_index, detail)
    SELECT run.id, CAST(:job_key AS text), 'submitted', CAST(:owner AS text), run.fencing_token,
           run.current_query_index, run.total_steps || ' steps'
    FROM run
)
SELECT * FROM run


-- name: count_losses
-- Fragment (an expression of the claim and the sweep, dataengine.engine.runs): the run's step losses with
-- one more charged to every step its lost worker had in flight.
{runs}.step_losses || COALESCE(
    (SELECT jsonb_object_agg(i::text, COALESCE(({runs}.step_losses ->> i::text)::int, 0) + 1)
     FROM unnest({runs}.in_flight_steps) AS i), '{}'::jsonb)

-- name: owner_alive
-- Fragment (a condition of the claim and the sweep): the lease owner of the run row has a fresh
-- heartbeat (:lease bound to lease_s). For lease_s after PostgreSQL (re)started every heartbeat
-- counts as fresh: the live processes were waiting for it, not dead.
EXISTS (SELECT 1 FROM worker_heartbeats h WHERE h.worker_id = {runs}.lease_owner AND (h.beat_at >= now() - :lease OR pg_postmaster_start_time() >= now() - :lease))

-- name: stalled
-- Fragment (a condition of dataengine.engine.runs.flag_stalled): the run has recorded no step for
-- :stall_factor times its usual time per step, and at least :stall_min.
now() - {runs}.last_updated_at > GREATEST(CAST(:stall_min AS interval),
    ({runs}.last_updated_at - COALESCE({runs}.started_at, {runs}.last_updated_at)) / GREATEST({runs}.completed_steps, 1)
    * CAST(:stall_factor AS float8))


-- name: beat
-- One process's heartbeat (dataengine.engine.liveness.beat_sql): its heartbeat rows (one per owner id), its
-- orphans handed back ({orphans}: a beat_orphans CTE per job), and the state of the runs it holds
-- ({held}: a beat_held SELECT per job, joined by UNION ALL). One statement however many runs it holds.
WITH beat AS (
    INSERT INTO worker_heartbeats AS h (worker_id, beat_at, backend_pid, backend_start)
    SELECT o, now(), pg_backend_pid(), (SELECT backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid())
    FROM unnest(CAST(:owners AS text[])) AS o
    ON CONFLICT (worker_id) DO UPDATE
    SET beat_at = excluded.beat_at, backend_pid = excluded.backend_pid, backend_start = excluded.backend_start,
        beats = h.beats + 1
){orphans}
{held}

-- name: beat_orphans
-- Fragment of beat, one CTE ({cte}) per job: free the runs this process owns in the database but
-- does not execute (a hand-back the database did not answer) whose last claim and last checkpoint
-- are older than a lease, for the sweeper to send again, as if handed back.
, {cte} AS (
    UPDATE {runs} SET lease_owner = NULL, lease_expires_at = now(), in_flight_steps = '{}',
           fencing_token = fencing_token + 1, last_updated_at = now()
    WHERE status = 'running' AND lease_owner = ANY(CAST(:owners AS text[]))
      AND lease_expires_at < now() AND last_updated_at < now() - :lease
      AND id <> ALL(CAST(:held AS uuid[]))
)

-- name: beat_held
-- Fragment of beat, one per job: the runs this process holds that are still its own (same token
-- and owner, still running), and whether cancelling them was asked. Each is looked up by its
-- primary key (a LATERAL subquery, which its LIMIT keeps from being flattened into a join the planner
-- could serve from the owner index), so the cost is the runs held here, whatever the rest of the fleet holds.
SELECT r.id, r.cancel_requested
FROM unnest(CAST(:held AS uuid[]), CAST(:tokens AS bigint[]), CAST(:holders AS text[])) AS x(id, token, owner)
CROSS JOIN LATERAL (SELECT id, cancel_requested, fencing_token, lease_owner, status FROM {runs} WHERE id = x.id LIMIT 1) r
WHERE r.fencing_token = x.token AND r.lease_owner = x.owner AND r.status = 'running'

-- name: forget_heartbeat
-- A process that holds no run any more: its heartbeat goes (a lease it left behind runs out).
DELETE FROM worker_heartbeats WHERE worker_id = :owner

-- name: dead_owners
-- Processes whose heartbeat says they are dead: older than :lease, or a little late (:grace) over a
-- PostgreSQL connection that is gone. None for :lease after PostgreSQL itself (re)started.
SELECT worker_id FROM worker_heartbeats h
WHERE NOT (pg_postmaster_start_time() >= now() - :lease)
  AND (h.beat_at < now() - :lease
       OR (h.beat_at < now() - :grace AND NOT EXISTS (
             SELECT 1 FROM pg_stat_activity a
             WHERE a.pid = h.backend_pid
               -- another role's sessions show no start time: present counts as connected
               AND (a.backend_start = h.backend_start OR a.backend_start IS NULL))))

-- name: bury_heartbeats
-- The heartbeats of dead processes whose runs were taken back, unless one beat again meanwhile.
DELETE FROM worker_heartbeats WHERE worker_id = ANY(:dead) AND beat_at < now() - :grace


-- name: events_prune
-- The oldest :batch events older than :older_than (dataengine.engine.events.prune): found through the
-- index on "at" (ix_run_events_at), then deleted by primary key, so a batch costs the same however
-- long the history is (an IN (SELECT ...) was a hash semi-join over the whole table).
DELETE FROM run_events WHERE id = ANY(ARRAY(
    SELECT id FROM run_events WHERE at < now() - :older_than ORDER BY at LIMIT :batch))


-- name: recent_steps
-- The averages of the newest :steps recorded steps of the job's newest :runs runs that have any
-- (dataengine.engine.estimates): the runs walk the newest-first index, and each run's steps its primary
-- key. {on_model}: recent_steps_on_model for a job whose runs name a model, else nothing.
WITH runs AS (
    SELECT id, created_at FROM {runs}
    WHERE completed_steps > 0 {on_model}
    ORDER BY created_at DESC, id DESC LIMIT :runs
), steps AS (
    SELECT s.prompt_tokens, s.completion_tokens, s.cost_usd
    FROM runs CROSS JOIN LATERAL (
        SELECT prompt_tokens, completion_tokens, cost_usd FROM {results}
        WHERE run_id = runs.id ORDER BY query_index DESC LIMIT :steps
    ) AS s
    ORDER BY runs.created_at DESC, runs.id DESC LIMIT :steps
)
SELECT count(*) AS steps, avg(prompt_tokens) AS prompt_tokens,
       avg(completion_tokens) AS completion_tokens, avg(cost_usd) AS cost_usd
FROM steps

-- name: recent_steps_on_model
-- Fragment of recent_steps: only runs on the model :model.
AND model IS NOT DISTINCT FROM CAST(:model AS text)


-- name: journal_insert
-- The LLM response journal's insert, batched by the process's writer thread (dataengine.llm.writer):
-- the rows arrive as one JSON array. A response already recorded is kept.
INSERT INTO llm_responses (run_id, step_index, fingerprint, job, model, response, prompt_tokens,
                           completion_tokens, cost_usd)
SELECT x.run_id, x.step_index, x.fingerprint, x.job, x.model, x.response, x.prompt_tokens,
       x.completion_tokens, x.cost_usd
FROM jsonb_to_recordset(CAST(:rows AS jsonb)) AS x(run_id uuid, step_index integer, fingerprint text,
     job text, model text, response jsonb, prompt_tokens integer, completion_tokens integer,
     cost_usd numeric)
ON CONFLICT DO NOTHING

-- name: journaled_steps
-- The steps at or after :start of a run that have recorded responses (found once per claim).
SELECT DISTINCT step_index FROM llm_responses WHERE run_id = :id AND step_index >= :start

-- name: journal_recorded
-- What a request (its fingerprint :f) was answered at step :s of run :r, and what it cost.
SELECT job, model, response, prompt_tokens, completion_tokens, cost_usd
FROM llm_responses WHERE run_id = :r AND step_index = :s AND fingerprint = :f

-- name: journal_prune
-- Journal rows of one job older than :age whose run (in the job's run table) is no longer active.
DELETE FROM llm_responses j WHERE j.job = :job AND j.created_at < now() - CAST(:age AS interval)
  AND NOT EXISTS (SELECT 1 FROM {runs} r WHERE r.id = j.run_id AND r.status IN ('queued', 'running'))


-- name: ledger_upsert
-- The cost ledger's upsert, batched by the writer thread (dataengine.llm.writer): one row per job,
-- model, property, workspace and hour, summed into (the batch is summed by key first: an upsert may
-- touch a row once).
INSERT INTO llm_costs AS c (hour, job, model, property, workspace_id, calls, prompt_tokens, cached_tokens,
                            completion_tokens, cost_usd, unpriced_calls)
SELECT date_trunc('hour', now()), x.job, x.model, x.property, x.workspace_id, x.calls, x.prompt_tokens,
       x.cached_tokens, x.completion_tokens, x.cost_usd, x.unpriced_calls
FROM jsonb_to_recordset(CAST(:rows AS jsonb)) AS x(job text, model text, property text, workspace_id text,
     calls integer, prompt_tokens bigint, cached_tokens bigint, completion_tokens bigint, cost_usd numeric,
     unpriced_calls integer)
ON CONFLICT (hour, job, model, property, workspace_id) DO UPDATE SET
    calls = c.calls + excluded.calls, prompt_tokens = c.prompt_tokens + excluded.prompt_tokens,
    cached_tokens = c.cached_tokens + excluded.cached_tokens,
    completion_tokens = c.completion_tokens + excluded.completion_tokens,
    cost_usd = c.cost_usd + excluded.cost_usd, unpriced_calls = c.unpriced_calls + excluded.unpriced_calls

-- name: cost_rollup_lock
-- The roll-up's watermark, locked for the transaction: one sweeper rolls up at a time, the others wait
-- and then find nothing left to roll up. :until is the start of the hour before this one.
SELECT rolled_until, date_trunc('hour', now()) - interval '1 hour' AS until FROM llm_cost_rollup WHERE id = 1 FOR UPDATE

-- name: cost_rollup
-- The ledger's hours in [:since, :until) added to llm_cost_totals, by every grouping of a report, over
-- every workspace (scope 'all') and for the row's own ('ws:' and its id). The day is the UTC date, as
-- dataengine.llm.ledger groups it.
INSERT INTO llm_cost_totals AS t (grouping, scope, key, calls, prompt_tokens, cached_tokens, completion_tokens,
                                  cost_usd, unpriced_calls)
SELECT g.grouping, s.scope, g.key, sum(c.calls), sum(c.prompt_tokens), sum(c.cached_tokens),
       sum(c.completion_tokens), sum(c.cost_usd), sum(c.unpriced_calls)
FROM llm_costs c
CROSS JOIN LATERAL (VALUES ('day', to_char(timezone('UTC', c.hour), 'YYYY-MM-DD')), ('kind', c.job),
                           ('model', c.model), ('property', c.property), ('workspace', c.workspace_id)) AS g(grouping, key)
CROSS JOIN LATERAL (VALUES ('all'), ('ws:' || c.workspace_id)) AS s(scope)
WHERE c.hour >= :since AND c.hour < :until
GROUP BY g.grouping, s.scope, g.key
ON CONFLICT (grouping, scope, key) DO UPDATE SET
    calls = t.calls + excluded.calls, prompt_tokens = t.prompt_tokens + excluded.prompt_tokens,
    cached_tokens = t.cached_tokens + excluded.cached_tokens,
    completion_tokens = t.completion_tokens + excluded.completion_tokens,
    cost_usd = t.cost_usd + excluded.cost_usd, unpriced_calls = t.unpriced_calls + excluded.unpriced_calls

-- name: cost_rollup_done
UPDATE llm_cost_rollup SET rolled_until = :until WHERE id = 1

-- name: cost_rolled_until
-- Where the roll-up stands: read first, in the same snapshot as the report that adds the hours after it
-- (a bound value, so that the planner reads those hours through the ledger's key).
SELECT rolled_until FROM llm_cost_rollup WHERE id = 1

-- name: cost_page
-- A page of a whole-history report grouped by :grouping ({key}: its expression over llm_costs), for
-- :scope. The candidates are the totals' first :reach in the page's order ({top}: cost_top or day_top)
-- and every key of the hours not rolled up yet (after :rolled_until); each is its total (looked up by
-- key: the LATERAL's LIMIT keeps it from becoming a hash join over every total) plus those hours.
WITH live AS (
    SELECT {key} AS key, sum(calls) AS calls, sum(prompt_tokens) AS prompt_tokens,
           sum(cached_tokens) AS cached_tokens, sum(completion_tokens) AS completion_tokens,
           sum(cost_usd) AS cost_usd, sum(unpriced_calls) AS unpriced_calls
    FROM llm_costs
    WHERE hour >= :rolled_until AND (:scope = 'all' OR 'ws:' || workspace_id = :scope)
    GROUP BY 1
), top AS ({top}),
candidates AS (SELECT key FROM top UNION SELECT key FROM live)
SELECT k.key,
       COALESCE(t.calls, 0) + COALESCE(l.calls, 0) AS calls,
       COALESCE(t.prompt_tokens, 0) + COALESCE(l.prompt_tokens, 0) AS prompt_tokens,
       COALESCE(t.cached_tokens, 0) + COALESCE(l.cached_tokens, 0) AS cached_tokens,
       COALESCE(t.completion_tokens, 0) + COALESCE(l.completion_tokens, 0) AS completion_tokens,
       COALESCE(t.cost_usd, 0) + COALESCE(l.cost_usd, 0) AS cost_usd,
       COALESCE(t.unpriced_calls, 0) + COALESCE(l.unpriced_calls, 0) AS unpriced_calls
FROM candidates k
LEFT JOIN LATERAL (SELECT * FROM llm_cost_totals
                   WHERE grouping = :grouping AND scope = :scope AND key = k.key LIMIT 1) t ON true
LEFT JOIN live l ON l.key = k.key
ORDER BY {order}
LIMIT :limit OFFSET :offset

-- name: cost_top
-- Fragment of cost_page: the totals' first :reach keys by cost, ties by key (ix_llm_cost_totals_by_cost
-- in its order). A key after them that the last hours do not touch comes after them in the page too.
SELECT key FROM llm_cost_totals WHERE grouping = :grouping AND scope = :scope
ORDER BY cost_usd DESC, key LIMIT :reach

-- name: day_top
-- Fragment of cost_page: the totals' first :reach days.
SELECT key FROM llm_cost_totals WHERE grouping = :grouping AND scope = :scope ORDER BY key LIMIT :reach

-- name: cost_total
-- The whole history's total for :scope: the totals by kind (a few rows) and the hours not rolled up yet.
SELECT COALESCE(sum(calls), 0) AS calls, COALESCE(sum(prompt_tokens), 0) AS prompt_tokens,
       COALESCE(sum(cached_tokens), 0) AS cached_tokens, COALESCE(sum(completion_tokens), 0) AS completion_tokens,
       COALESCE(sum(cost_usd), 0) AS cost_usd, COALESCE(sum(unpriced_calls), 0) AS unpriced_calls
FROM (
    SELECT calls, prompt_tokens, cached_tokens, completion_tokens, cost_usd, unpriced_calls
    FROM llm_cost_totals WHERE grouping = 'kind' AND scope = :scope
    UNION ALL
    SELECT calls, prompt_tokens, cached_tokens, completion_tokens, cost_usd, unpriced_calls FROM llm_costs
    WHERE hour >= :rolled_until AND (:scope = 'all' OR 'ws:' || workspace_id = :scope)
) x

-- name: unpriced_models
-- The models called without a price since :since: their calls are in no total.
SELECT DISTINCT model FROM llm_costs WHERE unpriced_calls > 0 AND hour >= date_trunc('hour', CAST(:since AS timestamptz))
ORDER BY model

-- name: unpriced_models_ever
-- The models ever called without a price: from the totals by model (a few rows) and the hours not
-- rolled up yet (after :rolled_until).
SELECT key FROM llm_cost_totals WHERE grouping = 'model' AND scope = 'all' AND unpriced_calls > 0
UNION
SELECT model FROM llm_costs WHERE hour >= :rolled_until AND unpriced_calls > 0
ORDER BY 1

-- name: spent_today
-- What the fleet spent since midnight UTC.
SELECT COALESCE(sum(cost_usd), 0) FROM llm_costs
WHERE hour >= date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'

-- name: spent_today_by_workspace
-- What one workspace (:workspace) spent since midnight UTC.
SELECT COALESCE(sum(cost_usd), 0) FROM llm_costs
WHERE hour >= date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AND workspace_id = :workspace
