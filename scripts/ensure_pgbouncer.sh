#!/usr/bin/env bash
# Sourced by scripts/test.sh: installs Debian's pgbouncer for the pooler tests when it is missing
# and we are root with apt-get. The package's own service is kept from starting (a policy-rc.d
# for the duration), so nothing is left listening on 6432; the tests start their own pgbouncer.
# Elsewhere the pooler tests skip, saying what to install (and fail under CI=true).

_pgbouncer_installed() {
  command -v pgbouncer >/dev/null 2>&1 || [ -x /usr/sbin/pgbouncer ]
}

_ensure_pgbouncer() {
  _pgbouncer_installed && return 0
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "note: pgbouncer is not installed; the pooler tests will skip (install Debian's pgbouncer)" >&2
    return 0
  fi
  echo "==> installing pgbouncer (Debian's package) for the pooler tests"
  local log=.venv/apt-pgbouncer.log policy=/usr/sbin/policy-rc.d placed="" rc=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\n# placed by dataengine scripts/test.sh while it installs pgbouncer\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    placed=1
  fi
  {
    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends pgbouncer
  } >"$log" 2>&1 || rc=$?
  if [ -n "$placed" ]; then rm -f "$policy"; fi
  # A policy-rc.d that was already there may have let the service start: stop only that pid.
  local pidfile=/run/postgresql/pgbouncer.pid
  if [ -s "$pidfile" ] && [ "$(cat /proc/"$(cat "$pidfile")"/comm 2>/dev/null)" = pgbouncer ]; then
    kill "$(cat "$pidfile")" 2>/dev/null || true
  fi
  if [ "$rc" != 0 ] || ! _pgbouncer_installed; then
    tail -n 30 "$log" >&2
    echo "installing pgbouncer failed (the whole log is in $log); the pooler tests will skip, or fail under CI=true" >&2
  fi
  return 0
}

_ensure_pgbouncer
