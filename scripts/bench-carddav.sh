#!/usr/bin/env bash
# contact-sync against vdirsyncer on the same Radicale address book, in the same run
# (issue 17). Prints a Markdown section for docs/benchmarks.md.
#
#   scripts/bench-carddav.sh                 # 5,000 cards
#   CARDS=1000 scripts/bench-carddav.sh
#
# Needs: radicale and vdirsyncer (pip install radicale vdirsyncer==0.21.0), curl, python3,
# and the release binary (built here with `cargo build --release`).
#
# Steps:
#   1. Radicale on a loopback port with N cards written straight into its storage.
#   2. Warm the server: one full sync-collection REPORT (Radicale builds its item cache on
#      the first full read; that cost belongs to the server). A second full REPORT, timed,
#      is the floor for any client.
#   3. Initial sync: vdirsyncer into a filesystem storage (wall time of `vdirsyncer sync`);
#      contact-sync's first round into the CRM (the round's own time, from the daemon's
#      "Sync round committed." log line).
#   4. 1 % of the cards change (PUT); both sync again.
#   5. No change; both sync again; contact-sync's requests are counted in Radicale's log.
set -euo pipefail
cd "$(dirname "$0")/.."

N="${CARDS:-5000}"
CHANGED=$(( N / 100 ))
work="$(mktemp -d)"
rpid=""
dpid=""
cleanup() {
    [ -n "$dpid" ] && kill "$dpid" 2>/dev/null || true
    [ -n "$rpid" ] && kill "$rpid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

command -v radicale >/dev/null || { echo "radicale is not installed" >&2; exit 1; }
command -v vdirsyncer >/dev/null || { echo "vdirsyncer is not installed" >&2; exit 1; }
cargo build --release --bin contact-sync >&2
bin="$PWD/target/release/contact-sync"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
now() { date +%s.%N; }
since() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.2f}')" "$1" "$(now)"; }

# ---- Radicale with N cards ----
book_dir="$work/col/collection-root/bench/book"
mkdir -p "$book_dir"
echo '{"tag": "VADDRESSBOOK"}' > "$book_dir/.Radicale.props"
python3 - "$book_dir" "$N" <<'EOF'
import sys
d, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    with open(f"{d}/card-{i:05d}.vcf", "w", newline="") as f:
        f.write(
            "BEGIN:VCARD\r\nVERSION:3.0\r\n"
            f"UID:card-{i:05d}\r\nN:Person{i};Bench;;;\r\nFN:Bench Person{i}\r\n"
            f"EMAIL;TYPE=INTERNET:bench{i}@example.org\r\nTEL;TYPE=CELL:+1 201 555 {i % 10000:04d}\r\n"
            f"ORG:Company {i % 250}\r\nTITLE:Engineer\r\nEND:VCARD\r\n"
        )
EOF
echo "bench:pw" > "$work/users"
rport="$(free_port)"
radicale --config "" --server-hosts "127.0.0.1:$rport" \
    --storage-filesystem-folder "$work/col" \
    --auth-type htpasswd --auth-htpasswd-encryption plain --auth-htpasswd-filename "$work/users" \
    --rights-type owner_only > "$work/radicale.log" 2>&1 &
rpid=$!
until curl -s -o /dev/null "http://127.0.0.1:$rport/"; do sleep 0.2; done
book="http://127.0.0.1:$rport/bench/book/"

report() {
    curl -s -o /dev/null -w '%{time_total}' -u bench:pw -X REPORT -H 'Depth: 0' \
        -H 'Content-Type: application/xml; charset=utf-8' \
        --data '<d:sync-collection xmlns:d="DAV:"><d:sync-token/><d:sync-level>1</d:sync-level><d:prop><d:getetag/></d:prop></d:sync-collection>' \
        "$book"
}
cold="$(report)"
warm="$(report)"

# ---- vdirsyncer ----
mkdir -p "$work/vds/status" "$work/vds/cards"
cat > "$work/vds/config" <<EOF
[general]
status_path = "$work/vds/status"

[pair bench]
a = "bench_dav"
b = "bench_fs"
collections = null

[storage bench_dav]
type = "carddav"
url = "$book"
username = "bench"
password = "pw"

[storage bench_fs]
type = "filesystem"
path = "$work/vds/cards"
fileext = ".vcf"
EOF
vds() { vdirsyncer -c "$work/vds/config" "$@" >> "$work/vds/log" 2>&1; }
{ yes || true; } | vds discover
t=$(now); vds sync; v_initial="$(since "$t")"

# ---- contact-sync ----
mkdir -p "$work/cs"
echo "bench-token-0123456789" > "$work/cs/api-token"
echo "pw" > "$work/cs/password"
cport="$(free_port)"
cat > "$work/cs/config.toml" <<EOF
[daemon]
data_dir = "$work/cs/data"
listen = "127.0.0.1:$cport"
api_token_file = "$work/cs/api-token"
audit_dir = "$work/cs/audit"
poll_interval = "1h"
contact_limit = 100000

[[accounts]]
id = "bench"
provider = "carddav"
url = "http://127.0.0.1:$rport/"
username = "bench"
password_file = "$work/cs/password"
group = "all"
direction = "one-way"
EOF
"$bin" --config "$work/cs/config.toml" run 2> "$work/cs/log" &
dpid=$!
round_secs() {
    # Waits for the Nth "Sync round committed." line and prints its seconds.
    local n="$1"
    for _ in $(seq 1 600); do
        local s
        s="$(grep 'Sync round committed' "$work/cs/log" | sed -n "${n}p" | sed -E 's/.*seconds=([0-9.]+).*/\1/')"
        if [ -n "$s" ]; then printf '%.2f' "$s"; return; fi
        sleep 0.2
    done
    echo "contact-sync round $n did not finish" >&2; cat "$work/cs/log" >&2; exit 1
}
sync_now() {
    curl -s -o /dev/null -X POST -H "Authorization: Bearer bench-token-0123456789" \
        "http://127.0.0.1:$cport/api/v1/sync"
}
c_initial="$(round_secs 1)"
crm="$(curl -s -H "Authorization: Bearer bench-token-0123456789" "http://127.0.0.1:$cport/api/v1/accounts/bench" \
    | python3 -c 'import json,sys; a=json.load(sys.stdin); print(a["today"]["added"]["to_crm"])')"

# ---- 1 % of the cards change ----
for i in $(seq 0 $(( CHANGED - 1 ))); do
    id="$(printf '%05d' $(( i * 100 )))"
    printf 'BEGIN:VCARD\r\nVERSION:3.0\r\nUID:card-%s\r\nN:Person%s;Bench;;;\r\nFN:Bench Person%s\r\nEMAIL;TYPE=INTERNET:bench%s@example.org\r\nTEL;TYPE=CELL:+1 201 555 0000\r\nORG:Changed Ltd\r\nTITLE:Lead\r\nEND:VCARD\r\n' \
        "$id" "$((10#$id))" "$((10#$id))" "$((10#$id))" \
        | curl -s -o /dev/null -u bench:pw -X PUT -H 'Content-Type: text/vcard' --data-binary @- "${book}card-$id.vcf"
done
t=$(now); vds sync; v_incr="$(since "$t")"
sync_now; c_incr="$(round_secs 2)"

# ---- no change ----
t=$(now); vds sync; v_none="$(since "$t")"
before="$(grep -c 'request for' "$work/radicale.log" || true)"
sync_now; c_none="$(round_secs 3)"
sleep 0.5
after="$(grep -c 'request for' "$work/radicale.log" || true)"
c_none_requests=$(( after - before ))

ratio() { python3 -c "import sys; print(f'{float(sys.argv[1]) / max(float(sys.argv[2]), 0.005):.1f}')" "$1" "$2"; }
cat <<EOF
### \`carddav_vs_vdirsyncer\`

\`CARDS=$N scripts/bench-carddav.sh\` — Radicale $(radicale --version 2>/dev/null | head -n1), $(vdirsyncer --version), one address book of $N vCard 3.0 cards, $CHANGED changed for the incremental round; $(nproc) cores, release profile, measured $(date -u '+%Y-%m-%d %H:%M UTC') at commit \`$(git rev-parse --short HEAD)\`.

| | time (s) | vs. warm REPORT | vdirsyncer (s) | vdirsyncer ÷ contact-sync |
|---|---:|---:|---:|---:|
| server: first full REPORT (builds its cache) | $cold | | | |
| server: warm full REPORT (the floor) | $warm | 1.0× | | |
| initial sync ($crm contacts into the CRM) | $c_initial | $(ratio "$c_initial" "$warm")× | $v_initial | $(ratio "$v_initial" "$c_initial")× |
| incremental round ($CHANGED changed) | $c_incr | | $v_incr | $(ratio "$v_incr" "$c_incr")× |
| no-change round | $c_none ($c_none_requests request(s)) | | $v_none | $(ratio "$v_none" "$c_none")× |

contact-sync times are the round's own time (the daemon's \`Sync round committed.\` line:
fetch, plan, commit to the store); vdirsyncer times are the wall time of \`vdirsyncer sync\`.
EOF
