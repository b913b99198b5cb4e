#!/usr/bin/env bash
# Runs inside ../shared/tools/systemd-sandbox (systemd is PID 1), as root:
#   install.sh REPO BIN PORT
# Follows the README's install block (between <!-- install:begin --> and
# <!-- install:end -->) line by line in a copy of the source tree, where the already built
# BIN stands in for `cargo build --release` (that line is skipped: target/release holds BIN)
# and PORT for 8631. Then checks what an administrator would: the unit is active, /healthz
# answers, `systemctl reload` applies a config change, `status` works with the documented
# operator token, the CRM token cannot do operator actions, and `systemctl stop` is clean.
set -euo pipefail
repo=$1 bin=$2 port=$3
# systemd writes LoadCredential= files from a helper in its own mount namespace and relies
# on /run propagating mounts back, as it does on a booted host (systemd makes / shared at
# boot). The sandbox mounts its /run tmpfs private, so credentials would stay empty here:
# make it shared, inside the sandbox only.
mount --make-rshared /run
work=$(mktemp -d)
cp -r "$repo/config" "$repo/systemd" "$repo/README.md" "$work/"
mkdir -p "$work/target/release"
cp "$bin" "$work/target/release/contact-sync"
sed -i "s/127\.0\.0\.1:8631/127.0.0.1:$port/" "$work/config/contact-sync.toml"
cd "$work"
awk '/<!-- install:end -->/ {on=0} on && !/^```/ {print} /<!-- install:begin -->/ {on=1}' README.md \
  | grep -v '^cargo build --release$' > steps.sh
[ -s steps.sh ] || { echo "no install block in README.md" >&2; exit 1; }
echo "== README install steps"
cat steps.sh
echo "== running them"
export PATH=/usr/local/bin:$PATH
if ! bash -euxo pipefail steps.sh; then
  systemctl status contact-sync --no-pager || true
  journalctl -u contact-sync --no-pager | tail -50 || true
  exit 1
fi

fail() {
  echo "FAIL: $*" >&2
  systemctl status contact-sync --no-pager || true
  journalctl -u contact-sync --no-pager | tail -50 || true
  exit 1
}
cfg=/etc/contact-sync/config.toml
base=http://127.0.0.1:$port

echo "== the unit is active"
[ "$(systemctl is-active contact-sync)" = active ] || fail "unit not active"

echo "== /healthz answers"
curl -fsS "$base/healthz" | grep -q '"status":"ok"' || fail "/healthz"

echo "== the secrets are root-only and reach the service as credentials"
[ "$(stat -c %a /etc/contact-sync/admin-token)" = 600 ] || fail "admin-token mode"
[ "$(stat -c %a /etc/contact-sync/token-key)" = 600 ] || fail "token-key mode"
[ ! -e /var/lib/contact-sync/token.key ] || fail "a key was made in the state directory"

echo "== systemctl reload applies a config change"
cat >> "$cfg" <<'TOML'

[[accounts]]
id = "reload-check"
provider = "google"
group = "all"
direction = "one-way"
TOML
systemctl reload contact-sync
ok=
for _ in $(seq 50); do
  if contact-sync --config "$cfg" status 2>/dev/null | grep -qE '(^|│ )reload-check '; then ok=1; break; fi
  sleep 0.2
done
[ -n "$ok" ] || fail "reload-check account not in status after reload"
journalctl -u contact-sync --no-pager | grep -q 'SIGHUP: reloading' || fail "no SIGHUP reload in the journal"

echo "== status works with the operator token (admin_token_file)"
contact-sync --config "$cfg" status sales-gmail | grep -qE '(^|│ )sales-gmail ' || fail "status sales-gmail"

echo "== the CRM token cannot do operator actions"
code=$(curl -s -o /dev/null -w '%{http_code}' -X POST -H "Authorization: Bearer $(cat /etc/contact-sync/api-token)" "$base/api/v1/sync")
[ "$code" = 403 ] || fail "CRM token on /api/v1/sync answered $code"
code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $(cat /etc/contact-sync/api-token)" "$base/api/v1/contacts")
[ "$code" = 200 ] || fail "CRM token on /api/v1/contacts answered $code"

echo "== systemctl stop is clean"
systemctl stop contact-sync
[ "$(systemctl show -p Result --value contact-sync)" = success ] || fail "Result is not success"
[ "$(systemctl show -p ExecMainStatus --value contact-sync)" = 0 ] || fail "exit status not 0"
journalctl -u contact-sync --no-pager | grep -q 'Stopped\.' || fail "no clean stop in the journal"
echo "== all checks passed"
