#!/usr/bin/env bash
# Installs what the operator tests need on a fresh Debian machine (run as root):
#   chromium  - tests/dashboard_browser.rs loads the dashboard in headless Chromium
#   promtool  - tests/operators.rs checks /metrics (Debian package: prometheus)
# Idempotent: installs only what is missing. With CI set, those tests fail when a tool
# is missing; without it they print a skip note.
set -euo pipefail

missing=()
command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ] || missing+=(chromium)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)

if [ ${#missing[@]} -eq 0 ]; then
    echo "install-test-deps: chromium and promtool are present."
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    SUDO=sudo
else
    SUDO=
fi

echo "install-test-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# The prometheus package starts a server on installation where an init system runs; the
# tests only need its promtool.
$SUDO apt-get install -y -qq "${missing[@]}"
command -v promtool >/dev/null
[ -x /usr/bin/chromium ]
echo "install-test-deps: done."
