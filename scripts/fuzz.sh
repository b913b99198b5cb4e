#!/usr/bin/env bash
# Runs every fuzz target under fuzz/ for a bounded time (cargo-fuzz, libFuzzer).
#
#   scripts/fuzz.sh                 # each target for 60 s
#   FUZZ_SECONDS=600 scripts/fuzz.sh google_person graph_page
#
# Needs a nightly toolchain (cargo-fuzz builds with sanitizer flags) and cargo-fuzz, which
# is installed when missing. The committed seeds in fuzz/corpus/<target>/ are read; new
# inputs go to fuzz/target/corpus/<target>/ (not committed); crashes land in
# fuzz/artifacts/<target>/.
set -euo pipefail

cd "$(dirname "$0")/.."
SECONDS_PER_TARGET="${FUZZ_SECONDS:-60}"
TARGETS=("$@")
if [ ${#TARGETS[@]} -eq 0 ]; then
    TARGETS=(google_person graph_page config api_contact_input)
fi

if ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    echo "fuzz.sh: no nightly toolchain; cargo-fuzz needs one (rustup toolchain install nightly)." >&2
    echo "fuzz.sh: the proptest versions of these targets run with: cargo test --test bad_input" >&2
    exit 2
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: installing cargo-fuzz"
    cargo install cargo-fuzz --locked || {
        echo "fuzz.sh: cannot install cargo-fuzz; run the proptests instead: cargo test --test bad_input" >&2
        exit 2
    }
fi

# Keep the fuzz build out of the main target directory.
export CARGO_TARGET_DIR="${FUZZ_TARGET_DIR:-$PWD/fuzz/target}"
status=0
for t in "${TARGETS[@]}"; do
    echo "== $t: ${SECONDS_PER_TARGET}s"
    log="fuzz/$t.log"
    work="$CARGO_TARGET_DIR/corpus/$t"
    mkdir -p "$work"
    # -rss_limit_mb: a decoder that blows memory on a small input is a finding too.
    if cargo +nightly fuzz run "$t" "$work" "fuzz/corpus/$t" -- \
        -max_total_time="$SECONDS_PER_TARGET" -rss_limit_mb=2048 -max_len=65536 \
        -print_final_stats=1 2>&1 | tee "$log" | grep -E '^(#[0-9]+ +DONE|==[0-9]+==|SUMMARY|stat::number_of_executed_units|stat::peak_rss_mb)'; then
        :
    fi
    if grep -qE 'ERROR: libFuzzer|panicked at|SUMMARY: ' "$log"; then
        echo "== $t: FAILED, see $log and fuzz/artifacts/$t/" >&2
        status=1
    else
        echo "== $t: no crash"
    fi
done
exit $status
