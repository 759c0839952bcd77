#!/usr/bin/env bash
# run.sh - `make bench-http`: compares HTTP server libraries on the gateway's
# hot request (POST /v1/jobs, answered 202) with kiln-bench-http and wrk.
#
#   bench/httplib/run.sh BIN_DIR [ROUNDS=3]     (BIN_DIR holds kiln-bench-http)
#
# Rounds are interleaved (round 1 runs every mode, then round 2 ...), so a
# slow spell of the machine hits every mode alike. Each run: a fresh server
# (2 threads) on a free loopback port, then wrk -t2 -c64 -d10s with
# bench/post.lua. One line per run:
#   http-cmp mode=M round=N rate=R/s p50_ms=.. p99_ms=.. non202=N server_us_per_req=.. wrk_us_per_req=..
# server_us_per_req and wrk_us_per_req are the CPU time (user + system) the
# server and wrk used during the run, divided by the requests answered.
# Then one summary line per mode: the min-max of rate and server_us_per_req.
# Modes: mhd mhd-hop evhttp evhttp-hop h2o h2o-hop (see http_cmp.c). A mode
# the binary does not know (h2o and h2o-hop, when built without
# libh2o-evloop) is skipped.
set -uo pipefail

BIN=${1:?usage: bench/httplib/run.sh BIN_DIR [ROUNDS=3]}
ROUNDS=${2:-3}
BIN=$(cd "$BIN" && pwd)
SERVER=$BIN/kiln-bench-http
HERE=$(cd "$(dirname "$0")" && pwd)
POST_LUA=$HERE/../post.lua
MODES_ALL="mhd mhd-hop evhttp evhttp-hop h2o h2o-hop"
HZ=$(getconf CLK_TCK)
TMP=$(mktemp -d /tmp/kiln-bench-http.XXXXXX)

note() { echo "bench-http: $*" >&2; }

[ -x "$SERVER" ] || { note "no $SERVER (make bench-http builds it)"; exit 1; }
command -v wrk >/dev/null || { note "wrk is not installed (deploy/install-deps.sh installs it)"; exit 1; }
command -v curl >/dev/null || { note "curl is not installed"; exit 1; }
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || { note "ROUNDS must be a positive number, not '$ROUNDS'"; exit 1; }

SRV_PID= # the server this script started, while it runs
stop_server() {
    [ -n "$SRV_PID" ] || return 0
    kill "$SRV_PID" 2>/dev/null
    wait "$SRV_PID"
    local rc=$?
    SRV_PID=
    return $rc
}
# shellcheck disable=SC2317 # cleanup is run by the EXIT trap
cleanup() {
    trap - EXIT INT TERM
    stop_server
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

answers() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Ports below the kernel's ephemeral range, so no outgoing connection holds one.
read -r EPH_LO _ </proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || EPH_LO=32768
((EPH_LO > 12000)) || EPH_LO=32768
free_port() { # a loopback port nothing listens on
    local p
    while :; do
        p=$((10000 + RANDOM % (EPH_LO - 10000)))
        answers "$p" || { echo "$p"; return; }
    done
}

proc_ticks() { # user+system clock ticks used so far by process $1
    awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0
}

children_ticks() { # sets TICKS: user+system ticks of this shell's waited-for children (wrk)
    local -a t
    # Not in $(...) or a pipeline: a subshell has no children of its own.
    times >"$TMP/times"
    read -r -a t <<<"$(tail -n 1 "$TMP/times")"
    TICKS=$(awk -v u="${t[0]}" -v s="${t[1]}" -v hz="$HZ" 'BEGIN {
        split(u, a, /[ms]/); split(s, b, /[ms]/); printf "%d", (a[1] * 60 + a[2] + b[1] * 60 + b[2]) * hz }')
}

# start_server MODE: starts it on a free port (3 tries) and waits until it
# answers; sets PORT. Returns 2 when the binary does not know MODE.
start_server() {
    local mode=$1 try deadline
    for try in 1 2 3; do
        PORT=$(free_port)
        "$SERVER" "$mode" "$PORT" 2 2>"$TMP/server.log" >&2 &
        SRV_PID=$!
        deadline=$((SECONDS + 10))
        while ((SECONDS < deadline)); do
            curl -s -o /dev/null --max-time 1 -X POST -d '{}' "http://127.0.0.1:$PORT/v1/jobs" && return 0
            kill -0 "$SRV_PID" 2>/dev/null || break
            sleep 0.05 # the poll interval; the deadline bounds the wait
        done
        stop_server
        grep -q "unknown mode" "$TMP/server.log" && return 2
        note "mode $mode did not come up on port $PORT (try $try): $(tr '\n' ' ' <"$TMP/server.log")"
    done
    return 1
}

# A mode the binary does not know is skipped: it says so and exits at once.
MODES=""
for m in $MODES_ALL; do
    if "$SERVER" "$m" 2>&1 | grep -q "unknown mode"; then
        note "skipping $m: $SERVER does not know it"
        continue
    fi
    MODES+="$m "
done

echo "# make bench-http: $(nproc) cores, $ROUNDS round(s), modes: $MODES(server threads 2; wrk -t2 -c64 -d10s, bench/post.lua)"

declare -A RATES=() SUS=() # mode -> space-separated values, one per run
for ((round = 1; round <= ROUNDS; round++)); do
    for m in $MODES; do
        start_server "$m"
        case $? in
        0) ;;
        2) note "skipping $m: the binary does not know it"; continue ;;
        *) note "mode $m round $round: no server, run skipped"; continue ;;
        esac
        s0=$(proc_ticks "$SRV_PID")
        children_ticks
        w0=$TICKS
        wrk -t2 -c64 -d10s -s "$POST_LUA" "http://127.0.0.1:$PORT/v1/jobs" >"$TMP/wrk.out" 2>"$TMP/wrk.err" ||
            note "mode $m round $round: wrk failed: $(tr '\n' ' ' <"$TMP/wrk.err")"
        children_ticks
        w1=$TICKS
        s1=$(proc_ticks "$SRV_PID")
        stop_server || note "mode $m round $round: the server did not exit cleanly: $(tr '\n' ' ' <"$TMP/server.log")"
        declare -A W=()
        read -r -a kvs <<<"$(grep '^WRK ' "$TMP/wrk.out")"
        for kv in "${kvs[@]:1}"; do W[${kv%%=*}]=${kv#*=}; done
        if [ -z "${W[requests]:-}" ] || [ "${W[requests]}" = 0 ]; then
            note "mode $m round $round: wrk answered nothing: $(tr '\n' ' ' <"$TMP/wrk.out")"
            unset W
            continue
        fi
        line=$(awk -v n="${W[requests]}" -v d="${W[duration_us]}" -v p50="${W[p50_us]}" -v p99="${W[p99_us]}" \
            -v s="$((s1 - s0))" -v w="$((w1 - w0))" -v hz="$HZ" 'BEGIN {
            printf "rate=%.0f/s p50_ms=%.3f p99_ms=%.3f server_us_per_req=%.2f wrk_us_per_req=%.2f",
                n / (d / 1e6), p50 / 1000, p99 / 1000, s * 1e6 / hz / n, w * 1e6 / hz / n }')
        sockerr=$((${W[connect_err]:-0} + ${W[read_err]:-0} + ${W[write_err]:-0} + ${W[timeout_err]:-0}))
        read -r rate p50 p99 sus wus <<<"$line"
        echo "http-cmp mode=$m round=$round $rate $p50 $p99 non202=${W[non202]:--} $sus $wus$( ((sockerr > 0)) && echo " socket_errors=$sockerr")"
        RATES[$m]+="${rate#rate=} "
        SUS[$m]+="${sus#server_us_per_req=} "
        unset W
    done
done

minmax() { # the min-max of space-separated numbers (a trailing "/s" is dropped)
    echo "$1" | tr ' ' '\n' | sed 's|/s$||' | awk 'NF {
        if (n++ == 0 || $1 < lo) lo = $1; if (n == 1 || $1 > hi) hi = $1 }
        END { if (n) printf "%s-%s", lo, hi; else printf "-" }'
}
for m in $MODES; do
    echo "http-cmp-summary mode=$m runs=$(echo "${RATES[$m]:-}" | wc -w) rate=$(minmax "${RATES[$m]:-}")/s server_us_per_req=$(minmax "${SUS[$m]:-}")"
done
exit 0
