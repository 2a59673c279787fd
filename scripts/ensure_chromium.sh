#!/usr/bin/env bash
# Sourced by scripts/test.sh: the runs page tests drive Debian's chromium with Playwright (the
# Python package, pointed at /usr/bin/chromium: Playwright's own browser download needs the
# internet, so `playwright install` is never run). Installs chromium when it is missing and we are
# root with apt-get; elsewhere those tests skip, saying what to install (and fail under CI=true).

_ensure_chromium() {
  [ -x /usr/bin/chromium ] && return 0
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "note: chromium is not installed; the runs page tests will skip (install Debian's chromium)" >&2
    return 0
  fi
  echo "==> installing chromium (Debian's package) for the runs page tests"
  local log=.venv/apt-chromium.log
  { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium; } \
    >"$log" 2>&1 || true
  if [ ! -x /usr/bin/chromium ]; then
    tail -n 30 "$log" >&2
    echo "installing chromium failed (the whole log is in $log); the runs page tests will skip, or fail under CI=true" >&2
  fi
  return 0
}

_ensure_chromium
