// A Node producer, as the seeds' web apps are: send one dataengine task with celery-node over
// Redis (Celery protocol 2, JSON) and print {"ok": true, "value": <result>} or {"ok": false, ...}.
// Usage: REDIS_URL=redis://127.0.0.1:6379/0 node send_task.js TASK_NAME 'KWARGS_JSON' [TIMEOUT_MS]
const celery = require("celery-node");

const [name, kwargsJson, timeoutMs] = process.argv.slice(2);
const url = process.env.REDIS_URL;
const client = celery.createClient(url, url);
const result = client.createTask(name).applyAsync([], JSON.parse(kwargsJson || "{}"));
result
  .get(Number(timeoutMs || 30000))
  .then((value) => console.log(JSON.stringify({ ok: true, id: result.taskId, value })))
  .catch((error) => {
    console.log(JSON.stringify({ ok: false, id: result.taskId, error: String(error) }));
    process.exitCode = 1;
  })
  .finally(() => client.disconnect());
