#!/usr/bin/env bash
# The large crash and fault runs of issue 9 (the CI runs the same tests at small sizes).
#   scripts/reliability.sh            # 25,000-contact initial sync with 50 kills,
#                                     # 1,000-contact two-way push with 50 kills,
#                                     # and the fault suite with 2,000 contacts per provider
# Results go to stdout; copy the summary lines into docs/reliability.md.
set -euo pipefail
cd "$(dirname "$0")/.."
export CRASH_CONTACTS="${CRASH_CONTACTS:-25000}"
export CRASH_KILLS="${CRASH_KILLS:-50}"
export CRASH_WINDOW_MS="${CRASH_WINDOW_MS:-8000}"
export CRASH_PUSH="${CRASH_PUSH:-1000}"
export CRASH_PUSH_KILLS="${CRASH_PUSH_KILLS:-50}"
cargo test --release --test crash -- --nocapture --test-threads 1 2>&1 | grep -E "kills|test |result"
FAULT_CONTACTS="${FAULT_CONTACTS:-2000}" cargo test --release --test faults -- --nocapture 2>&1 | grep -E "faults injected|test |result"
