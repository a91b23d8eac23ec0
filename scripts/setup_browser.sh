#!/usr/bin/env bash
# Install Debian's Chromium and its ChromeDriver, which tests/test_frontend.py drives headless to load the UI
# workflows in ComfyUI's real frontend. A second run only checks that both binaries are there.
# Needs root (or sudo) and apt-get; set REALISID_SKIP_BROWSER=1 to skip it.
set -euo pipefail
log() { echo "[setup-browser] $*" >&2; }

if [ "${REALISID_SKIP_BROWSER:-0}" = 1 ]; then log "skipped (REALISID_SKIP_BROWSER=1)"; exit 0; fi
if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
  log "chromium and chromedriver already installed"
  exit 0
fi
if ! command -v apt-get >/dev/null; then
  log "apt-get not found: install chromium and chromedriver at /usr/bin yourself (the browser test skips without them)"
  exit 0
fi
SUDO=()
if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null; then SUDO=(sudo); else log "not root and no sudo: cannot install chromium"; exit 1; fi
fi
log "apt-get update"
"${SUDO[@]}" apt-get update -q >&2
log "apt-get install chromium chromium-driver (about 500 MB, under a minute)"
DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -q --no-install-recommends chromium chromium-driver >&2
log "installed: $(/usr/bin/chromedriver --version 2>/dev/null | head -1)"
