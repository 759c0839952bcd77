#!/usr/bin/env bash
# run.sh - runs Kiln's test suites: tests/run.sh BINDIR [unit|it|all]
#
# BINDIR holds kiln-unit-tests, kiln-it-tests and the binaries under test
# (normally build/san/bin, built with ASan+UBSan by `make test`). The
# integration tests start real nats-server and Kiln processes from BINDIR on
# free loopback ports; nothing needs to be running beforehand.
#
# Environment: KILN_TEST_JOBS (parallel Criterion workers, default 2),
# KILN_IT_KEEP=1 keeps every test's temp dir (logs, data), KILN_IT_KEEP=fail
# keeps only failed tests' dirs. Extra arguments after the mode go to Criterion
# (e.g. --filter 'e2e/*').
set -u

here="$(cd "$(dirname "$0")" && pwd)"
bindir="${1:-build/san/bin}"
mode="${2:-all}"
shift $(( $# >= 2 ? 2 : $# ))

case "$mode" in unit|it|all) ;; *) echo "usage: $0 BINDIR [unit|it|all] [criterion args...]" >&2; exit 2 ;; esac
if [ ! -d "$bindir" ]; then echo "run.sh: no such directory: $bindir" >&2; exit 2; fi
bindir="$(cd "$bindir" && pwd)"

export KILN_BIN_DIR="$bindir"
# Sanitizers: leaks are errors; third-party leaks at exit are suppressed only
# where investigated (see tests/lsan.supp).
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:halt_on_error=1:abort_on_error=0:strict_string_checks=1:check_initialization_order=1}"
export LSAN_OPTIONS="${LSAN_OPTIONS:-suppressions=$here/lsan.supp:print_suppressions=0}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
jobs="${KILN_TEST_JOBS:-2}"

summaries=()
failed=0
start_all=$(date +%s)

run_suite() { # name binary [args]
    local name="$1" bin="$2"; shift 2
    if [ ! -x "$bin" ]; then
        echo "run.sh: FAIL: $bin is missing (build it first: make test)" >&2
        summaries+=("$name: MISSING $bin")
        failed=1
        return
    fi
    local out t0 t1 rc
    out="$(mktemp /tmp/kiln-run.XXXXXX)"
    t0=$(date +%s)
    echo "==== $name: $bin --jobs $jobs $*"
    "$bin" --jobs "$jobs" "$@" 2>&1 | tee "$out"
    rc=${PIPESTATUS[0]}
    t1=$(date +%s)
    local syn
    syn="$(grep -a 'Synthesis:' "$out" | tail -n 1)"
    [ -n "$syn" ] || syn="(no Criterion summary: the runner itself crashed)"
    if grep -aq -e 'ERROR: AddressSanitizer' -e 'ERROR: LeakSanitizer' -e 'runtime error:' "$out"; then
        # A failed test that jumped out of its body leaks its locals: look at
        # the first failure first; a report with every test passing is real.
        echo "run.sh: $name: sanitizer report in the test runner output" >&2
        rc=${rc:-1}; [ "$rc" -eq 0 ] && rc=1
    fi
    if [ "$rc" -ne 0 ]; then
        failed=1
        summaries+=("$name: FAILED (exit $rc, $((t1 - t0)) s) $syn")
        grep -a -e '^\[FAIL\]' "$out" | sed "s/^/    $name /" > "$out.fails"
        # What failed and why, here at the end: the logs a failed test dumps
        # push Criterion's messages out of a short tail (CI shows one).
        grep -a -e '^\[----\] .*[^ ]' -e '^harness: ' "$out" | head -n 60 |
            sed "s/^/        /" >> "$out.fails"
    else
        summaries+=("$name: ok ($((t1 - t0)) s) $syn")
        : > "$out.fails"
    fi
    cat "$out.fails" >> /tmp/kiln-run-fails.$$ 2>/dev/null
    rm -f "$out" "$out.fails"
}

: > /tmp/kiln-run-fails.$$
if [ "$mode" = unit ] || [ "$mode" = all ]; then
    run_suite unit "$bindir/kiln-unit-tests" "$@"
fi
if [ "$mode" = it ] || [ "$mode" = all ]; then
    if ! command -v nats-server >/dev/null 2>&1 && [ ! -x /usr/sbin/nats-server ]; then
        echo "run.sh: FAIL: nats-server not found (deploy/install-deps.sh installs it)" >&2
        summaries+=("integration: MISSING nats-server"); failed=1
    else
        run_suite integration "$bindir/kiln-it-tests" "$@"
    fi
fi

echo
echo "==== summary ($(( $(date +%s) - start_all )) s wall)"
if [ -s /tmp/kiln-run-fails.$$ ]; then
    echo "failed tests:"
    cat /tmp/kiln-run-fails.$$
fi
rm -f /tmp/kiln-run-fails.$$
for s in "${summaries[@]}"; do echo "$s"; done
if [ "$failed" -ne 0 ]; then
    echo "TESTS FAILED"
    exit 1
fi
echo "ALL TESTS PASSED"
