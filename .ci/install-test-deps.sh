#!/usr/bin/env bash
# Installs what the test suite needs on a fresh Debian machine. Idempotent: skips what is
# already there. Used by .ci/run; run it once by hand before `cargo test` on a new machine.
#   chromium  - tests/dashboard_browser.rs loads the dashboard in headless Chromium
#   promtool  - tests/operators.rs checks /metrics (Debian package: prometheus)
#   rsyslogd  - tests/audit.rs ships the audit files with rsyslog's imfile (package: rsyslog)
#   radicale, xandikos - tests/carddav.rs syncs against both real CardDAV servers (PyPI);
#               git - Xandikos keeps address books in git repositories
#   systemd   - tests/systemd.rs: systemd-analyze, and the README's install steps under a real
#               systemd booted by ../shared/tools/systemd-sandbox; curl for its checks
#   cargo-deny - .ci/run: `cargo deny check licenses bans sources` (built from crates.io)
# With CI set, those tests fail when a tool is missing; without it they print a skip note.
set -euo pipefail

need_apt=()
command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ] || need_apt+=(chromium)
command -v promtool >/dev/null 2>&1 || need_apt+=(prometheus)
command -v rsyslogd >/dev/null 2>&1 || [ -x /usr/sbin/rsyslogd ] || need_apt+=(rsyslog)
command -v git >/dev/null 2>&1 || need_apt+=(git)
[ -x /lib/systemd/systemd ] && command -v systemd-analyze >/dev/null 2>&1 || need_apt+=(systemd)
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "Installing Debian packages: ${need_apt[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  # Chromium's recommended packages bring the fonts the dashboard screenshot needs.
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
  command -v promtool >/dev/null
  [ -x /usr/sbin/rsyslogd ]
  [ -x /usr/bin/chromium ]
  [ -x /lib/systemd/systemd ]
fi

# cargo-deny (about 10 minutes to build on 2 cores; see docs/security.md).
if ! command -v cargo-deny >/dev/null 2>&1; then
  echo "Installing cargo-deny from crates.io"
  cargo install --locked cargo-deny
fi

# Google's Python client (ships the People API discovery document) for the simulator's
# conformance tests.
if ! python3 -c "import googleapiclient" >/dev/null 2>&1; then
  echo "Installing google-api-python-client from PyPI"
  python3 -m pip install --quiet --disable-pip-version-check google-api-python-client
fi

# Real CardDAV servers for tests/carddav.rs.
if ! command -v radicale >/dev/null 2>&1 || ! command -v xandikos >/dev/null 2>&1; then
  echo "Installing radicale and xandikos from PyPI"
  python3 -m pip install --quiet --disable-pip-version-check radicale xandikos
fi

# playwright-core (npm; no browser download: it drives Debian's Chromium) for the sync-health
# browser test in tests/health.rs.
if ! command -v node >/dev/null 2>&1; then
  echo "Installing Debian packages: nodejs npm"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq nodejs npm >/dev/null
fi
browser_dir="$(cd "$(dirname "$0")/.." && pwd)/tests/browser"
if [ ! -d "$browser_dir/node_modules/playwright-core" ]; then
  echo "Installing playwright-core from the npm registry"
  (cd "$browser_dir" && npm ci --no-audit --no-fund --silent)
fi
