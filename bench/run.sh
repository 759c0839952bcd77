#!/usr/bin/env bash
# run.sh - `make bench`: starts its own nats-server (JetStream, file storage,
# temp dir, free loopback port) and Kiln's binaries, runs every workload and
# prints one line per figure with its goal, met or NOT MET.
#
#   bench/run.sh BIN_DIR        (BIN_DIR holds kiln-* and kiln-bench*)
#
# Settings (environment): BENCH_JOBS (100000), BENCH_W1_RUNS (3: limit-W1
# and kiln-W1 are each the median of that many runs, made in turn),
# BENCH_STORE_SIZES
# (10000,1000000), BENCH_BUDGET_S (270: the store fill stops so the whole run
# ends within it), BENCH_KEEP=1 keeps the temp dir and logs, BENCH_PHASES
# ("limit flow w4 store": a subset runs only those parts, e.g. for profiling),
# BENCH_NATS_ARGS: more nats-server arguments (e.g. "--profile 6061" serves
# Go's pprof profiles of the server, whose Debian binary is stripped; not -m:
# the run serves the server's monitoring on a port of its own and reads /varz).
set -uo pipefail

BIN=${1:?usage: bench/run.sh BIN_DIR}
BIN=$(cd "$BIN" && pwd)
HERE=$(cd "$(dirname "$0")" && pwd)
JOBS=${BENCH_JOBS:-100000}
W1_RUNS=${BENCH_W1_RUNS:-3}
STORE_SIZES=${BENCH_STORE_SIZES:-10000,1000000}
BUDGET_S=${BENCH_BUDGET_S:-270}
PHASES=" ${BENCH_PHASES:-limit flow w4 store} "
CONCURRENCY=256
TOKEN=bench-token
TMP=$(mktemp -d /tmp/kiln-bench.XXXXXX)
LOGS=$TMP/logs
mkdir -p "$LOGS"

declare -A PID=()   # name -> pid of what this script started
SUMMARY=$TMP/summary # every printed figure line, to tell whether all goals were met

note() { echo "bench: $*" >&2; }
phase() { [[ $PHASES == *" $1 "* ]]; }

stop() { # stop NAME: SIGTERM, wait up to 10 s, then SIGKILL
    local name=$1 pid=${PID[$1]:-}
    [ -n "$pid" ] || return 0
    kill -TERM "$pid" 2>/dev/null
    local i
    for ((i = 0; i < 100; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    unset "PID[$name]"
}

cleanup() {
    trap - EXIT INT TERM
    local n
    for n in backlog gateway consumer store devprovider nats limitnats; do stop "$n"; done
    if [ "${BENCH_KEEP:-0}" = 1 ]; then note "kept $TMP"; else rm -rf "$TMP"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

answers() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Ports below the kernel's ephemeral range, so no outgoing connection holds one.
read -r EPH_LO _ </proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || EPH_LO=32768
((EPH_LO > 12000)) || EPH_LO=32768
USED_PORTS=" "
free_port() { # free_port VAR: sets VAR to a loopback port nothing listens on, new to this run
    local -n out_=$1
    local p
    while :; do
        p=$((10000 + RANDOM % (EPH_LO - 10000)))
        case $USED_PORTS in *" $p "*) continue ;; esac
        answers "$p" && continue
        USED_PORTS+="$p "
        # shellcheck disable=SC2034 # a nameref: this sets the caller's VAR
        out_=$p
        return
    done
}

wait_for() { # wait_for WHAT SECONDS COMMAND...: until COMMAND succeeds; it returning 2 = give up
    local what=$1 secs=$2 rc
    shift 2
    local deadline=$((SECONDS + secs))
    while :; do
        "$@"
        rc=$?
        ((rc == 0)) && return 0
        if ((rc == 2 || SECONDS >= deadline)); then
            note "$what did not come up within ${secs}s (logs: $LOGS; BENCH_KEEP=1 keeps them)"
            return 1
        fi
        sleep 0.05
    done
}

start_nats() { # start_nats DATADIR [NAME]; a new port on each of 3 tries (another process may take one)
    # NAME: nats (Kiln's; NATS_URL, NATS_MON_PORT) or limitnats (the limit
    # program's; LIMIT_URL, LIMIT_MON_PORT). The monitoring port serves /varz:
    # the messages per job (nats_msgs).
    local name=${2:-nats} try port mon
    for try in 1 2 3; do
        free_port port
        free_port mon
        # shellcheck disable=SC2086 # BENCH_NATS_ARGS is a list of words
        nats-server -js -a 127.0.0.1 -p "$port" -m "$mon" -sd "$1" ${BENCH_NATS_ARGS:-} 2>>"$LOGS/$name-server.log" >&2 &
        PID[$name]=$!
        if wait_for nats-server 15 answers_or_died "$name" "$port" && kill -0 "${PID[$name]}" 2>/dev/null; then
            if [ "$name" = nats ]; then
                NATS_URL=nats://127.0.0.1:$port NATS_MON_PORT=$mon
            else
                LIMIT_URL=nats://127.0.0.1:$port LIMIT_MON_PORT=$mon
            fi
            return 0
        fi
        stop "$name"
    done
    return 1
}

answers_or_died() { # answers_or_died NAME PORT: true once PORT answers; stops waiting if NAME exited
    answers "$2" && return 0
    kill -0 "${PID[$1]}" 2>/dev/null || { note "$1 exited at start"; return 2; }
    return 1
}

start_kiln() { # start_kiln NAME [VAR=VALUE...]: $BIN/kiln-NAME with the shared settings
    local name=$1
    shift
    env KILN_NATS_URL="$NATS_URL" KILN_DATA_DIR="$DATA_DIR" KILN_LOG_LEVEL=info "$@" \
        "$BIN/kiln-$name" 2>>"$LOGS/$name.log" >&2 &
    PID[$name]=$!
}

http_ok() { curl -fs -o /dev/null --max-time 1 "$1" 2>/dev/null; }
http_ok_or_died() { # http_ok_or_died NAME URL (see answers_or_died)
    http_ok "$2" && return 0
    kill -0 "${PID[$1]}" 2>/dev/null || { note "kiln-$1 exited at start"; return 2; }
    return 1
}

start_store() {
    start_kiln store KILN_METRICS_ADDR="127.0.0.1:$STORE_METRICS_PORT"
    wait_for kiln-store 15 http_ok_or_died store "http://127.0.0.1:$STORE_METRICS_PORT/healthz"
}

start_consumer() {
    start_kiln consumer KILN_LOG_LEVEL=${CONS_LOG:-info} KILN_PROVIDER_URL="http://127.0.0.1:$DEV_PORT/v1" \
        KILN_CONCURRENCY=$CONCURRENCY KILN_METRICS_ADDR="127.0.0.1:$CONS_METRICS_PORT"
    wait_for kiln-consumer 15 http_ok_or_died consumer "http://127.0.0.1:$CONS_METRICS_PORT/healthz"
}

STACK=0
start_stack() { # a fresh nats-server and Kiln; 3 tries (a port may be taken meanwhile)
    local try
    for try in 1 2 3; do
        start_stack_once && return 0
        note "starting Kiln failed (try $try); see $LOGS"
        stop_stack
    done
    return 1
}

start_stack_once() { # nats-server, dev provider, store, consumer, gateway, on new ports
    free_port DEV_PORT
    free_port GW_PORT
    free_port CONS_METRICS_PORT
    free_port STORE_METRICS_PORT
    STACK=$((STACK + 1))
    local dir=$TMP/stack$STACK
    mkdir -p "$dir"
    DATA_DIR=$dir/data
    start_nats "$dir/nats" || return 1
    start_kiln devprovider KILN_DEVPROVIDER_ADDR="127.0.0.1:$DEV_PORT" KILN_DEVPROVIDER_LATENCY_MS=0
    wait_for kiln-devprovider 15 answers_or_died devprovider "$DEV_PORT" || return 1
    start_store || return 1
    start_consumer || return 1
    phase w4 || return 0
    # Rate limiting off: W4 measures throughput, one user sends everything.
    start_kiln gateway KILN_HTTP_ADDR="127.0.0.1:$GW_PORT" KILN_API_KEYS="$TOKEN:bench" \
        KILN_SUBMIT_RATE=0
    wait_for kiln-gateway 30 http_ok_or_died gateway "http://127.0.0.1:$GW_PORT/readyz"
}

stop_stack() {
    local n
    for n in gateway consumer store devprovider nats; do stop "$n"; done
}

hwm_mb() { # peak RSS (VmHWM) of a process this script started, in MiB
    local pid=${PID[$1]:-}
    [ -n "$pid" ] && awk '/^VmHWM:/ {printf "%.1f", $2 / 1024}' "/proc/$pid/status" 2>/dev/null || echo "-"
}

cpu_ticks() { # user+system clock ticks used so far by a process this script started
    local pid=${PID[$1]:-}
    [ -n "$pid" ] && awk '{print $14 + $15}' "/proc/$pid/stat" 2>/dev/null || echo 0
}

children_ticks() { # user+system ticks of this shell's waited-for children (kiln-bench, wrk)
    local -a t
    times >"$TMP/times" # not in a pipeline: a subshell has no children of its own
    read -r -a t <<<"$(tail -n 1 "$TMP/times")"
    awk -v u="${t[0]}" -v s="${t[1]}" -v hz="$(getconf CLK_TCK)" 'BEGIN {
        split(u, a, /[ms]/); split(s, b, /[ms]/); printf "%d", (a[1] * 60 + a[2] + b[1] * 60 + b[2]) * hz }' >"$TMP/ticks"
    TICKS=$(cat "$TMP/ticks")
}

declare -A CPU0=()
metrics_of() { # metrics_of PORT: a Kiln process's /metrics text (empty when it does not answer)
    curl -s -m 2 "http://127.0.0.1:$1/metrics"
}

store_counts() { # the store's batches, messages and gathering pauses so far (its /metrics)
    metrics_of "$STORE_METRICS_PORT" | awk '
        $1 == "kiln_store_batches_total" {b = $2}
        $1 == "kiln_store_messages_total" {m = $2}
        $1 == "kiln_store_gather_pauses_total" {g = $2}
        END {print b + 0, m + 0, g + 0}'
}

nats_msgs() { # nats_msgs [MON_PORT]: the messages nats-server received and sent so far: "IN OUT" (its /varz; "- -" when it does not answer)
    curl -s -m 2 "http://127.0.0.1:${1:-$NATS_MON_PORT}/varz" | awk -F'[:,]' '
        $1 ~ /"in_msgs"/ {i = $2} $1 ~ /"out_msgs"/ {o = $2}
        END {if (i == "" || o == "") print "- -"; else print i + 0, o + 0}'
}

msgs_since() { # msgs_since "IN OUT" JOBS [MON_PORT]: "IN OUT PER_JOB" of nats-server since that mark ("-" when unknown)
    awk -v a="$1" -v b="$(nats_msgs "${3:-}")" -v n="$2" 'BEGIN {split(a, x, " "); split(b, y, " ");
        if (x[1] == "-" || y[1] == "-") {print "- - -"; exit}
        i = y[1] - x[1]; o = y[2] - x[2]; printf "%d %d %s", i, o, (n > 0 ? sprintf("%.1f", (i + o) / n) : "-")}'
}

msgs_line() { # msgs_line WORKLOAD JOBS LIMIT_NAME: a kiln-msgs line from the cpu_mark'ed counts
    local -a m
    read -r -a m <<<"$(msgs_since "$NATS0" "$2")"
    echo "kiln-msgs workload=$1 jobs=$2 nats_in=${m[0]} nats_out=${m[1]} per_job=${m[2]} $3_per_job=$(fig "$3/msgs.per_job") ratio=$(ratio "${m[2]}" "$(fig "$3/msgs.per_job")") (messages through nats-server per job, received + sent, against the limit's; not a goal)" | tee -a "$SUMMARY"
}

cpu_mark() { # remembers the CPU used so far by every process, the store's and nats-server's counts
    local n
    for n in nats devprovider store consumer gateway; do CPU0[$n]=$(cpu_ticks "$n"); done
    STORE0=$(store_counts)
    NATS0=$(nats_msgs)
    children_ticks
    CPU0[client]=$TICKS
    CPU0[wall]=$(date +%s%N)
}

cpu_line() { # cpu_line WORKLOAD: sets CPU_LINE to the CPU seconds per process since cpu_mark
    local n out="" hz
    hz=$(getconf CLK_TCK)
    local wall
    wall=$(awk -v a="${CPU0[wall]}" -v b="$(date +%s%N)" 'BEGIN {printf "%.2f", (b - a) / 1e9}')
    for n in nats store consumer devprovider gateway; do
        [ -n "${PID[$n]:-}" ] || continue
        out+=" $n=$(awk -v a="${CPU0[$n]}" -v b="$(cpu_ticks "$n")" -v hz="$hz" 'BEGIN {printf "%.2f", (b - a) / hz}')"
    done
    children_ticks
    out+=" bench_client=$(awk -v a="${CPU0[client]}" -v b="$TICKS" -v hz="$hz" 'BEGIN {printf "%.2f", (b - a) / hz}')"
    local sc
    sc=$(awk -v a="$STORE0" -v b="$(store_counts)" 'BEGIN {split(a, x, " "); split(b, y, " ");
        printf "store_batches=%d store_messages=%d store_gather_pauses=%d", y[1] - x[1], y[2] - x[2], y[3] - x[3]}')
    CPU_LINE="kiln-cpu workload=$1 wall_s=$wall cpu_s:$out $sc (CPU seconds per process during the workload, $(nproc) cores, and the store's fetched batches; not a goal)"
}

cpu_busy_pct() { # busy share of all CPUs over the next 0.5 s, from /proc/stat
    local a b
    a=$(awk '/^cpu / {print $2+$3+$4+$7+$8, $5+$6}' /proc/stat)
    sleep 0.5
    b=$(awk '/^cpu / {print $2+$3+$4+$7+$8, $5+$6}' /proc/stat)
    awk -v a="$a" -v b="$b" 'BEGIN { split(a, x, " "); split(b, y, " ");
        busy = y[1] - x[1]; all = busy + y[2] - x[2]; printf "%d", (all > 0 ? 100 * busy / all : 0) }'
}

settle() { # before a timed phase: what the previous phase left behind
    # (dirty image, stream and RocksDB files; RocksDB compactions; the
    # server's clean-up of acked messages) done first, not on the same 2
    # cores during the next measurement. Waits for < 15 % CPU, at most 30 s.
    local t0=$SECONDS busy
    sync
    while :; do
        busy=$(cpu_busy_pct)
        ((busy < 15)) && break
        if ((SECONDS - t0 >= 30)); then
            note "the machine stayed busy (${busy}% CPU) after the previous phase; measuring anyway"
            break
        fi
    done
    note "settled in $((SECONDS - t0))s (${busy}% CPU)"
}

reset_hwm() { # the peak RSS starts again from the current RSS
    local n
    for n in "$@"; do
        [ -n "${PID[$n]:-}" ] && echo 5 >"/proc/${PID[$n]}/clear_refs" 2>/dev/null
    done
    return 0
}

# --- figures --------------------------------------------------------------
declare -A FIG=() # "<name>/<workload>.<field>" -> value, from the FIG lines

parse_figs() { # parse_figs FILE: reads `FIG name=... workload=... k=v ...` lines
    local line kv key name wl
    while read -r line; do
        [[ $line == FIG\ * ]] || continue
        name="" wl=""
        for kv in $line; do
            case $kv in name=*) name=${kv#name=} ;; workload=*) wl=${kv#workload=} ;; esac
        done
        for kv in $line; do
            [[ $kv == *=* ]] || continue
            key=${kv%%=*}
            FIG[$name/$wl.$key]=${kv#*=}
        done
    done <"$1"
}

fig() { echo "${FIG[$1]:--}"; } # fig NAME/WORKLOAD.FIELD

# cmp A OP B (numbers, "-" is never true)
cmp() { awk -v a="$1" -v b="$3" -v op="$2" 'BEGIN {
    if (a == "-" || b == "-" || a == "") exit 1
    if (op == "<=") exit !(a + 0 <= b + 0); if (op == ">=") exit !(a + 0 >= b + 0)
    if (op == "==") exit !(a + 0 == b + 0); exit 1 }'; }

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "-" || b == "-" || b + 0 == 0) print "-"; else printf "%.2f", a / b }'; }

verdict() { if "$@"; then echo met; else echo "NOT MET"; fi; }

line() { # line NAME/WORKLOAD [extra text]: the standard figure line
    local k=$1
    shift
    local name=${k%/*} wl=${k#*/}
    printf '%s workload=%s jobs=%s secs=%s rate=%s/s p50_ms=%s p99_ms=%s rss_mb=%s%s\n' \
        "$name" "$wl" "$(fig "$k.jobs")" "$(fig "$k.secs")" "$(fig "$k.rate")" \
        "$(fig "$k.p50_ms")" "$(fig "$k.p99_ms")" "${RSS_OVERRIDE:-$(fig "$k.rss_mb")}" "${*:+ $*}" |
        tee -a "$SUMMARY"
}

all_met() { # all_met CHECK... (each a quoted command line)
    local c ok=0
    for c in "$@"; do eval "$c" || ok=1; done
    return $ok
}

run_bench() { # run_bench OUTFILE ARGS...: kiln-bench with its FIG lines kept
    local out=$1
    shift
    "$BIN/kiln-bench" "$@" --url "$NATS_URL" >"$out" 2>>"$LOGS/kiln-bench.log"
    local rc=$?
    parse_figs "$out"
    return $rc
}

echo "# make bench: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), nats-server $(nats-server --version 2>/dev/null | awk '{print $NF}'), jobs=$JOBS, consumer concurrency $CONCURRENCY, dev provider 0 ms"

MEM_CONS=- W4_GW=- W4_JOBS=- W2_STORE=- W2_CONS=- W2_GW=- W4_STORE=- W4_CONS=- SOCK_ERR=-
declare -A WRK=()

# --- W1 runs ---------------------------------------------------------------
# A W1 run lasts 1-2 s, so one hiccup of the machine moves it, and the
# machine's phase moves every run of a minute: limit-W1 and kiln-W1 are each
# the median of W1_RUNS runs, and with both phases selected their runs
# alternate (limit, Kiln, limit, ...), each on its own nats-server, so that
# the ratio compares runs made seconds apart.
W1_LIMIT_RUNS=() W1_KILN_RUNS=() # "RATE FILE" per run

w1_run_limit() { # w1_run_limit K: one limit-W1 run on the limit's nats-server
    local out=$TMP/limit-w1-$1.out
    "$BIN/kiln-bench-limit" --url "$LIMIT_URL" --jobs "$JOBS" --only w1 >"$out" 2>>"$LOGS/limit.log" ||
        note "the limit program failed in w1 (see $LOGS/limit.log)"
    W1_LIMIT_RUNS+=("$(fig_in "$out" limit-W1/W1.rate) $out")
}

w1_run_kiln() { # w1_run_kiln K: one kiln-W1 run, its jobs purged after
    local out=$TMP/kiln-w1-$1.out
    "$BIN/kiln-bench" w1 --url "$NATS_URL" --jobs "$JOBS" --timeout-ms 60000 >"$out" 2>>"$LOGS/kiln-bench.log" ||
        note "kiln-W1 run $1 failed (see $LOGS/kiln-bench.log)"
    W1_KILN_RUNS+=("$(fig_in "$out" kiln-W1/W1.rate) $out")
}

fig_in() { # fig_in FILE NAME/WORKLOAD.FIELD: one figure of a FIG file ("-" when missing), FIG untouched
    (FIG=() && parse_figs "$1" && fig "$2") # a subshell: its FIG goes with it
}

w1_median() { # w1_median NAME "RATE FILE"...: the median run's figures become NAME's, every run's rate NAME/runs
    local name=$1 median
    shift
    median=$(printf '%s\n' "$@" | sort -g | sed -n "$((($# + 1) / 2))p") # a failed run's "-" sorts first
    parse_figs "${median#* }"
    FIG[$name/runs]=$(printf '%s\n' "$@" | awk '{printf "%s%s", (NR > 1 ? "/" : ""), $1}')
}

w1_limit_line() { # w1_limit_line "IN OUT": the limit-W1 line, its messages counted from that mark
    local -a m
    read -r -a m <<<"$(msgs_since "$1" "$((JOBS * ${#W1_LIMIT_RUNS[@]}))" "$LIMIT_MON_PORT")"
    FIG[limit-W1/msgs.per_job]=${m[2]}
    w1_median limit-W1 "${W1_LIMIT_RUNS[@]}"
    line limit-W1/W1 "msgs_per_job=$(fig limit-W1/msgs.per_job) runs_per_s=$(fig limit-W1/runs) (async publish with Nats-Msg-Id, every ack awaited; the median of $W1_RUNS runs$(phase flow && echo ", each made just before a kiln-W1 run"))"
}

# --- the limit: libnats alone ---------------------------------------------
if phase limit; then
    start_nats "$TMP/nats-limit" limitnats || exit 1
    if ! phase flow; then # else W1's runs alternate with kiln-W1's (below)
        m0=$(nats_msgs "$LIMIT_MON_PORT")
        for ((k = 1; k <= W1_RUNS; k++)); do w1_run_limit "$k"; done
        w1_limit_line "$m0"
    fi
    m0=$(nats_msgs "$LIMIT_MON_PORT")
    "$BIN/kiln-bench-limit" --url "$LIMIT_URL" --jobs "$JOBS" --only w2 >"$TMP/limit-w2.out" 2>>"$LOGS/limit.log" ||
        note "the limit program failed in w2 (see $LOGS/limit.log)"
    parse_figs "$TMP/limit-w2.out"
    read -r -a m <<<"$(msgs_since "$m0" "$JOBS" "$LIMIT_MON_PORT")"
    FIG[limit-W2/msgs.per_job]=${m[2]}
    stop limitnats
    line limit-W2/W2 "msgs_per_job=$(fig limit-W2/msgs.per_job) (publish + pull batches of 256 + done publish + ack; first publish to last done ack)"
fi

# --- Kiln: each phase gets a fresh stack if the previous one left work -------
if phase flow || phase w4; then
    start_stack || exit 1
fi
DIRTY=0
unfinished_report() { # after a phase left jobs unfinished: where they stopped, from the metrics
    local m
    m=$(metrics_of "$CONS_METRICS_PORT" | grep -E '^kiln_consumer_(jobs_completed_total|jobs_retried_total|in_flight|redeliveries_total|stalled_redriven_total) ')
    note "consumer: $(echo $m)"
    m=$(metrics_of "$STORE_METRICS_PORT" | grep -E '^kiln_store_(messages_total|done_published_total|batch_retries_total|applied_seq|sweep_redriven_total) ')
    note "store: $(echo $m)"
    m=$(metrics_of "$DEV_PORT" | grep -E '^kiln_devprovider_(requests_total|requests_aborted_total) ')
    note "dev provider: $(echo $m)"
    note "nats: slow_consumers=$(curl -s -m 2 "http://127.0.0.1:$NATS_MON_PORT/varz" | awk -F'[:,]' '$1 ~ /"slow_consumers"/ {print $2 + 0}') (connections the server cut off for not reading)"
    # Each stream and durable as nats-server sees it: messages held; left to
    # deliver, delivered and not acked, pull requests waiting, redelivered
    # (KILN_DONE's count against the bench's tells a lost jobs.done from a
    # job that never finished).
    curl -s -m 2 "http://127.0.0.1:$NATS_MON_PORT/jsz?consumers=true" | python3 -c '
import json, sys
try:
    d = json.load(sys.stdin)
except ValueError:
    sys.exit(0)
for a in d.get("account_details") or []:
    for s in a.get("stream_detail") or []:
        st = s.get("state") or {}
        print("nats: stream %s messages=%s first_seq=%s last_seq=%s" % (
            s["name"], st.get("messages"), st.get("first_seq"), st.get("last_seq")))
        for c in s.get("consumer_detail") or []:
            print("nats: %s/%s pending=%s ack_pending=%s waiting=%s redelivered=%s delivered=%s ack_floor=%s" % (
                s["name"], c["name"], c.get("num_pending"), c.get("num_ack_pending"), c.get("num_waiting"),
                c.get("num_redelivered"), c.get("delivered", {}).get("stream_seq"), c.get("ack_floor", {}).get("stream_seq")))
' | while read -r l; do note "$l"; done
}

fresh_if_dirty() {
    if [ "$DIRTY" = 1 ]; then
        note "the previous phase left unfinished jobs: starting a fresh nats-server and Kiln"
        stop_stack
        start_stack || exit 1
        DIRTY=0
    fi
}

if phase flow; then
    # W1: the client library publishes JOBS jobs into Kiln's stream while no
    # Kiln process consumes (as limit-W1: nothing consumes), W1_RUNS times,
    # each run right after a limit-W1 run (W1 runs, above). Each run but the
    # last is purged; the store and a fresh consumer (concurrency 256) then
    # drain the last run's backlog: its peak RSS is the kiln-mem figure.
    stop consumer
    stop store
    if phase limit; then
        start_nats "$TMP/nats-limit-w1" limitnats || exit 1
        LIMIT_M0=$(nats_msgs "$LIMIT_MON_PORT")
    fi
    for ((k = 1; k < W1_RUNS; k++)); do
        phase limit && w1_run_limit "$k"
        w1_run_kiln "$k"
    done
    if phase limit; then
        w1_run_limit "$W1_RUNS"
        w1_limit_line "$LIMIT_M0"
    fi
    # The backlog run is timed like the others, so run.sh waits for its
    # ready line without forking: a `sleep 0.05` loop took ~10 % of a core
    # (a fork and exec each tick) from the run it waited for.
    rm -f "$TMP/ready" && mkfifo "$TMP/ready" && exec {READY_FD}<>"$TMP/ready" || exit 1
    "$BIN/kiln-bench" backlog --url "$NATS_URL" --jobs "$JOBS" --ready-file "$TMP/ready" \
        --timeout-ms 60000 >"$TMP/backlog.out" 2>>"$LOGS/kiln-bench.log" &
    PID[backlog]=$! # an interrupted run stops it (it may wait to open the FIFO)
    until read -r -t 1 -u "$READY_FD" _; do kill -0 "${PID[backlog]}" 2>/dev/null || break; done
    exec {READY_FD}<&-
    { start_store && start_consumer; } || exit 1
    wait "${PID[backlog]}" || { note "the backlog was not fully drained"; unfinished_report; DIRTY=1; }
    unset "PID[backlog]"
    stop limitnats
    parse_figs "$TMP/backlog.out"
    W1_KILN_RUNS+=("$(fig kiln-W1/W1.rate) $TMP/backlog.out")
    w1_median kiln-W1 "${W1_KILN_RUNS[@]}"
    MEM_CONS=$(hwm_mb consumer)
    r1=$(ratio "$(fig kiln-W1/W1.rate)" "$(fig limit-W1/W1.rate)")
    line kiln-W1/W1 "ratio=$r1 goal=ratio>=0.8 $(verdict cmp "$r1" '>=' 0.8) runs_per_s=$(fig kiln-W1/runs) (client library: submit_async + flush into KILN_JOBS, nothing consuming; the median of $W1_RUNS runs; rss = producer)"
    RSS_OVERRIDE="consumer:$MEM_CONS" line kiln-drain/backlog "(the $JOBS-job backlog drained by the store and a consumer started after it; not a goal)"

    # W2: everything running; its clock starts at the first publish.
    fresh_if_dirty
    settle
    reset_hwm store consumer gateway devprovider
    cpu_mark
    run_bench "$TMP/w12.out" w12 --jobs "$JOBS" --timeout-ms 60000 || { note "W2 did not finish every job"; unfinished_report; DIRTY=1; }
    W2_STORE=$(hwm_mb store) W2_CONS=$(hwm_mb consumer) W2_GW=$(hwm_mb gateway)
    cpu_line W2
    CPU_W2=$CPU_LINE
    MSGS_W2=$(msgs_line W2 "$(fig kiln-W2/W2.jobs)" limit-W2)
    line kiln-W1/W1-live "ratio=$(ratio "$(fig kiln-W1/W1-live.rate)" "$(fig limit-W1/W1.rate)") (W2's publish: as W1 while the store and consumer process the jobs on the same cores; not a goal)"
    r2=$(ratio "$(fig kiln-W2/W2.rate)" "$(fig limit-W2/W2.rate)")
    w2ok() { cmp "$r2" '>=' 0.5 && cmp "$(fig kiln-W2/W2.jobs)" '==' "$JOBS"; }
    RSS_OVERRIDE="store:$W2_STORE,consumer:$W2_CONS" \
        line kiln-W2/W2 "ratio=$r2 goal=ratio>=0.5 $(verdict w2ok) not_completed=$(fig kiln-W2/W2.not_completed) stages_ms_p50/p99=$(fig 'kiln-W2/W2.stages_ms_p50/p99') (first publish to last jobs.done; p50/p99 = each job's submit to its jobs.done)"
    echo "$CPU_W2"
    echo "$MSGS_W2"

    # W3: submit -> jobs.done latency at a steady 1 000 jobs/s for 10 s.
    fresh_if_dirty
    settle
    cpu_mark
    run_bench "$TMP/w3.out" w3 --rate 1000 --secs 10 --timeout-ms 20000 || { note "W3 did not finish every job"; unfinished_report; DIRTY=1; }
    cpu_line W3
    MSGS_W3=$(msgs_line W3 "$(fig kiln-W3/W3.jobs)" limit-W2)
    w3ok() { cmp "$(fig kiln-W3/W3.p50_ms)" '<=' 2 && cmp "$(fig kiln-W3/W3.p99_ms)" '<=' 10 &&
        cmp "$(fig kiln-W3/W3.jobs)" '==' 10000; }
    line kiln-W3/W3 "goal=p50<=2,p99<=10 $(verdict w3ok) late_submits=$(fig kiln-W3/W3.late_submits) stages_ms_p50/p99=$(fig 'kiln-W3/W3.stages_ms_p50/p99') (open loop; stages: queue = submit to started, run = started to completed, done = completed to jobs.done received; rss = bench client)"
    echo "$CPU_LINE"
    echo "$MSGS_W3"
fi

run_wrk() { # run_wrk WORKLOAD: wrk against POST /v1/jobs; fills FIG[kiln-W4/WORKLOAD.*], WRK, SOCK_ERR
    local wl=$1 kv
    WRK=()
    wrk -t2 -c64 -d10s -s "$HERE/post.lua" "http://127.0.0.1:$GW_PORT/v1/jobs" \
        >"$TMP/wrk-$wl.out" 2>>"$LOGS/wrk.log" || note "wrk failed"
    read -r -a W <<<"$(grep '^WRK ' "$TMP/wrk-$wl.out")"
    for kv in "${W[@]:1}"; do WRK[${kv%%=*}]=${kv#*=}; done
    FIG[kiln-W4/$wl.jobs]=${WRK[requests]:--}
    FIG[kiln-W4/$wl.secs]=$(awk -v d="${WRK[duration_us]:-0}" 'BEGIN {printf "%.3f", d / 1e6}')
    FIG[kiln-W4/$wl.rate]=$(awk -v n="${WRK[requests]:-0}" -v d="${WRK[duration_us]:-0}" 'BEGIN {if (d > 0) printf "%.0f", n / (d / 1e6); else print "-"}')
    FIG[kiln-W4/$wl.p50_ms]=$(awk -v v="${WRK[p50_us]:--}" 'BEGIN {if (v == "-") print v; else printf "%.3f", v / 1000}')
    FIG[kiln-W4/$wl.p99_ms]=$(awk -v v="${WRK[p99_us]:--}" 'BEGIN {if (v == "-") print v; else printf "%.3f", v / 1000}')
    SOCK_ERR=$((${WRK[connect_err]:-0} + ${WRK[read_err]:-0} + ${WRK[write_err]:-0} + ${WRK[timeout_err]:-0}))
}

if phase w4; then
    # W4: the submit path (gateway -> JetStream, with the store tracking every
    # job) under wrk; post.lua counts every answer that is not 202. The workers
    # are paused, as nothing consumes in limit-W1 (their rate is W2's figure);
    # W4-live then repeats it with the consumer working through the jobs on
    # the same 2 cores.
    fresh_if_dirty
    stop consumer
    settle
    reset_hwm store gateway
    cpu_mark
    run_wrk W4
    W4_GW=$(hwm_mb gateway) W4_STORE=$(hwm_mb store)
    cpu_line W4
    CPU_W4=$CPU_LINE
    MSGS_W4=$(msgs_line W4 "${WRK[requests]:-0}" limit-W1)
    w4ok() { cmp "$(fig kiln-W4/W4.rate)" '>=' 30000 && cmp "$(fig kiln-W4/W4.p99_ms)" '<=' 10 &&
        [ "${WRK[non202]:-x}" = 0 ] && [ "$SOCK_ERR" = 0 ]; }
    RSS_OVERRIDE="gateway:$W4_GW" line kiln-W4/W4 "goal=rate>=30000,p99<=10,all-202 $(verdict w4ok) non202=${WRK[non202]:--} first_non202=${WRK[first_non202]:--} socket_errors=$SOCK_ERR (wrk -t2 -c64 -d10s; store running, consumer paused)"
    echo "$CPU_W4"
    echo "$MSGS_W4"
    W4_JOBS=${WRK[requests]:--}

    settle
    start_consumer || exit 1
    DIRTY=1 # it works through W4's jobs; the next phase needs a fresh stack
    reset_hwm consumer
    cpu_mark
    run_wrk W4-live
    W4_CONS=$(hwm_mb consumer)
    cpu_line W4-live
    RSS_OVERRIDE="gateway:$(hwm_mb gateway)" line kiln-W4/W4-live "non202=${WRK[non202]:--} socket_errors=$SOCK_ERR (as W4 while the consumer works through the queued jobs on the same cores; not a goal)"
    echo "$CPU_LINE"
fi

# --- memory -----------------------------------------------------------------
if phase flow; then
    FIG[kiln-mem/backlog.jobs]=$JOBS
    # Only a consumer that really worked through the backlog shows its memory.
    memok() { cmp "$MEM_CONS" '<=' 32 && cmp "$(fig kiln-drain/backlog.jobs)" '==' "$JOBS"; }
    RSS_OVERRIDE=$MEM_CONS line kiln-mem/backlog "process=consumer concurrency=$CONCURRENCY drained=$(fig kiln-drain/backlog.jobs)/$JOBS goal=consumer<=32MiB,drained $(verdict memok)"
fi
if phase w4; then
    FIG[kiln-mem/W4.jobs]=$W4_JOBS
    RSS_OVERRIDE=$W4_GW line kiln-mem/W4 "process=gateway goal=gateway<=64MiB $(verdict cmp "$W4_GW" '<=' 64) (during W4: store=$W4_STORE consumer=$W4_CONS)"
fi
if phase flow; then
    FIG[kiln-mem/W2.jobs]=$JOBS
    RSS_OVERRIDE=- line kiln-mem/W2 "store=$W2_STORE consumer=$W2_CONS gateway=$W2_GW (peaks during W2; not goals)"
fi

# --- kiln-store: GET latency with a small and a large store ----------------
if phase store; then
    stop_stack
    # A fresh store and no consumer: the filled jobs stay pending, each a full
    # record with its indexes, like any job waiting for a worker.
    DATA_DIR=$TMP/store-data
    start_nats "$TMP/nats-store" || exit 1
    free_port STORE_METRICS_PORT
    start_kiln store KILN_METRICS_ADDR="127.0.0.1:$STORE_METRICS_PORT"
    wait_for kiln-store 15 http_ok_or_died store "http://127.0.0.1:$STORE_METRICS_PORT/healthz" || exit 1
    FILL_MS=$(((BUDGET_S - SECONDS) * 1000))
    ((FILL_MS < 20000)) && FILL_MS=20000
    run_bench "$TMP/store.out" store --sizes "$STORE_SIZES" --samples 5000 \
        --fill-deadline-ms "$FILL_MS" --store-pid "${PID[store]}" || note "the store could not be filled to every size within the budget"
    while read -r l; do
        [[ $l == "FIG name=kiln-store-fill "* || $l == "FIG name=kiln-store "* ]] || continue
        declare -A S=()
        for kv in $l; do [[ $kv == *=* ]] && S[${kv%%=*}]=${kv#*=}; done
        if [ "${S[name]}" = kiln-store-fill ]; then
            printf 'kiln-store-fill workload=fill jobs=%s secs=%s rate=%s/s p50_ms=- p99_ms=- rss_mb=%s target=%s complete=%s (pending jobs published and applied by the store; not a goal)\n' \
                "${S[jobs]}" "${S[secs]}" "${S[rate]}" "${S[store_rss_mb]}" "${S[target]}" "${S[complete]}" | tee -a "$SUMMARY"
            continue
        fi
        sok() { cmp "${S[p99_ms]}" '<=' 1 && [ "${S[get_errors]}" = 0 ]; }
        printf 'kiln-store workload=%s jobs=%s secs=%s rate=%s/s p50_ms=%s p99_ms=%s rss_mb=%s store_jobs=%s get_errors=%s goal=p99<=1 %s (jobs.status of random ids, one at a time; rss = store)\n' \
            "${S[workload]}" "${S[jobs]}" "${S[secs]}" "${S[rate]}" "${S[p50_ms]}" "${S[p99_ms]}" \
            "${S[store_rss_mb]}" "${S[store_jobs]}" "${S[get_errors]}" "$(verdict sok)" | tee -a "$SUMMARY"
    done <"$TMP/store.out"
    for want in ${STORE_SIZES//,/ }; do
        grep -q "target=$want .*complete=yes" "$TMP/store.out" ||
            echo "kiln-store workload=store-$want goal=p99<=1 NOT MET (the store did not reach $want jobs within the budget)" | tee -a "$SUMMARY"
    done
fi

echo "# make bench: ${SECONDS}s in run.sh; $(grep -q 'NOT MET' "$SUMMARY" 2>/dev/null && echo "some goals NOT MET" || echo "every goal met")"
exit 0
