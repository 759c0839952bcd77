#!/bin/sh
# Installs the Debian 12 packages Kiln needs to build, test and run, if any is
# missing. Idempotent: when everything is present it only checks and exits.
#   deploy/install-deps.sh              what make, make run, make test, make bench need
#   deploy/install-deps.sh bench-http   also the libraries make bench-http compares
#   deploy/install-deps.sh fuzz         also clang and its libFuzzer (make fuzz)
set -eu

PKGS="build-essential pkg-config protobuf-c-compiler libprotobuf-c-dev libnats-dev nats-server
librocksdb-dev libcurl4-openssl-dev libssl-dev libjansson-dev libyajl-dev libmicrohttpd-dev libpng-dev zlib1g-dev
libcriterion-dev wrk curl"
case "${1:-}" in
    "") ;;
    bench-http) PKGS="$PKGS libevent-dev libh2o-evloop-dev" ;;
    fuzz) PKGS="$PKGS clang libclang-rt-14-dev" ;;
    *) echo "install-deps: unknown set '$1' (known: bench-http, fuzz)" >&2; exit 2 ;;
esac

missing=""
for p in $PKGS; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing="$missing $p"
    fi
done
[ -z "$missing" ] && exit 0

echo "install-deps: installing:$missing"
if [ "$(id -u)" != 0 ]; then
    SUDO=sudo
else
    SUDO=
fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing
