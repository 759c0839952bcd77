#!/bin/sh
# Runs every libFuzzer target in BINDIR for SECS seconds each, starting from
# its seed corpus (tests/fuzz/corpus/<target>, read only: new inputs go to a
# temp dir). A crash, leak, sanitizer report or failed check stops that
# target; its input is kept in build/fuzz/artifacts/<target>/ and the run
# fails. Replay one with: build/fuzz/bin/<target> <file>.
#   tests/fuzz/run.sh build/fuzz/bin 60
set -u
BINDIR=${1:?usage: run.sh BINDIR [SECS]}
SECS=${2:-60}
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
ARTIFACTS="$ROOT/build/fuzz/artifacts"
WORK=$(mktemp -d /tmp/kiln-fuzz-run.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

export TMPDIR="$WORK" # the targets' scratch dirs go with $WORK, also after a finding
export ASAN_OPTIONS="abort_on_error=1:detect_leaks=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
export LSAN_OPTIONS="suppressions=$ROOT/tests/lsan.supp:print_suppressions=0"

failed=""
for bin in "$BINDIR"/fuzz_*; do
    name=$(basename "$bin")
    mkdir -p "$WORK/$name" "$ARTIFACTS/$name"
    seeds="$HERE/corpus/$name"
    [ -d "$seeds" ] || seeds=""
    echo "fuzz: $name for ${SECS}s"
    if "$bin" -max_total_time="$SECS" -timeout=10 -rss_limit_mb=2048 -max_len=8192 \
        -print_final_stats=1 -artifact_prefix="$ARTIFACTS/$name/" \
        "$WORK/$name" $seeds >"$WORK/$name.log" 2>&1; then
        runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$WORK/$name.log")
        cov=$(grep -o 'cov: [0-9]*' "$WORK/$name.log" | tail -1)
        echo "fuzz: $name passed: ${runs:-?} inputs, $cov"
    else
        echo "fuzz: $name FAILED; its log:"
        grep -v '^#[0-9]' "$WORK/$name.log" | tail -60
        ls "$ARTIFACTS/$name"/* 2>/dev/null | sed 's/^/fuzz: input kept: /'
        failed="$failed $name"
    fi
done
if [ -n "$failed" ]; then
    echo "fuzz: FAILED:$failed"
    exit 1
fi
echo "fuzz: every target passed"
