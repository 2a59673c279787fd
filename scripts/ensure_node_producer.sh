#!/usr/bin/env bash
# Sourced by scripts/test.sh: the Node producer tests need node and celery-node (tests/node, from
# the npm registry, pinned by its package-lock.json). Node comes from Debian's nodejs/npm when it
# is missing and we are root; elsewhere those tests skip, saying what to install (fail under CI=true).

_ensure_node_producer() {
  local log=.venv/node-producer.log
  if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
      echo "note: node/npm are not installed; the Node producer tests will skip (install Debian's nodejs and npm)" >&2
      return 0
    fi
    echo "==> installing node and npm (Debian's packages) for the Node producer tests"
    { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends nodejs npm; } \
      >"$log" 2>&1 || { tail -n 30 "$log" >&2; echo "installing node failed (log: $log)" >&2; return 0; }
  fi
  local stamp="tests/node/node_modules/.installed-$(sha256sum tests/node/package-lock.json | cut -c1-16)"
  [ -f "$stamp" ] && return 0
  echo "==> installing celery-node for the Node producer tests"
  if npm ci --prefix tests/node --no-audit --no-fund --loglevel=error >"$log" 2>&1; then
    touch "$stamp"
  else
    tail -n 30 "$log" >&2
    echo "npm ci in tests/node failed (log: $log); the Node producer tests will skip, or fail under CI=true" >&2
  fi
  return 0
}

_ensure_node_producer
