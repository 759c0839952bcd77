#!/usr/bin/env bash
# Starts a complete local Kiln for `make run`: nats-server (JetStream, data
# under $KILN_DATA_DIR/nats) unless one already answers at $KILN_NATS_URL, then
# the dev provider, store, consumer and gateway. Ctrl-C stops everything this
# script started (by PID).
set -euo pipefail

BIN=${1:-build/bin}
export KILN_DATA_DIR=${KILN_DATA_DIR:-./var}
export KILN_NATS_URL=${KILN_NATS_URL:-nats://127.0.0.1:4222}
export KILN_HTTP_ADDR=${KILN_HTTP_ADDR:-127.0.0.1:8080}
export KILN_DEVPROVIDER_ADDR=${KILN_DEVPROVIDER_ADDR:-127.0.0.1:8090}
export KILN_PROVIDER_URL=${KILN_PROVIDER_URL:-http://$KILN_DEVPROVIDER_ADDR/v1}
export KILN_API_KEYS=${KILN_API_KEYS:-dev-token:dev}

mkdir -p "$KILN_DATA_DIR/logs"
pids=()
stopping=0

stop_all() {
    trap - INT TERM EXIT
    stopping=1
    echo "run: stopping"
    local i
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
        kill -TERM "${pids[$i]}" 2>/dev/null || true
        wait "${pids[$i]}" 2>/dev/null || true
    done
}
trap stop_all INT TERM EXIT

# host:port of the first server in the NATS URL list.
first=${KILN_NATS_URL%%,*}
hostport=${first#*://}
nats_host=${hostport%:*}
nats_port=${hostport##*:}

answers() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

wait_for() { # wait_for DESCRIPTION SECONDS COMMAND...
    local what=$1 secs=$2
    shift 2
    local deadline=$((SECONDS + secs))
    until "$@"; do
        if ((SECONDS >= deadline)); then
            echo "run: $what did not come up within ${secs}s; see $KILN_DATA_DIR/logs" >&2
            exit 1
        fi
        sleep 0.1
    done
}

if answers "$nats_host" "$nats_port"; then
    echo "run: using the nats-server already answering at $KILN_NATS_URL"
else
    nats-server -js -a "$nats_host" -p "$nats_port" -sd "$KILN_DATA_DIR/nats" \
        2>"$KILN_DATA_DIR/logs/nats-server.log" >&2 &
    pids+=($!)
    wait_for nats-server 15 answers "$nats_host" "$nats_port"
fi

# start NAME: runs $BIN/NAME with its log in $KILN_DATA_DIR/logs. Its tee
# ignores INT and TERM: Ctrl-C signals the whole process group, and a tee
# gone first would lose the component's shutdown lines. It ends when the
# component closes its stderr.
start() {
    "$BIN/$1" 2> >(trap '' INT TERM; exec tee -a "$KILN_DATA_DIR/logs/$1.log" >&2) &
    pids+=($!)
}

start kiln-devprovider
start kiln-store
start kiln-consumer
start kiln-gateway

ready() { curl -fsS -o /dev/null "http://$KILN_HTTP_ADDR/readyz"; }
wait_for kiln-gateway 30 ready

cat <<MSG

Kiln is running.
  API:        http://$KILN_HTTP_ADDR   (token: ${KILN_API_KEYS%%:*})
  try:        curl -s -H 'Authorization: Bearer ${KILN_API_KEYS%%:*}' -H 'Content-Type: application/json' \\
                   -d '{"prompt":"a red fox in snow"}' http://$KILN_HTTP_ADDR/v1/jobs
  logs:       $KILN_DATA_DIR/logs/
Ctrl-C stops everything.
MSG

# Stay until Ctrl-C or until any component exits.
wait -n "${pids[@]}" || true
if ((stopping == 0)); then
    echo "run: a component exited; stopping the rest (see $KILN_DATA_DIR/logs)" >&2
fi
