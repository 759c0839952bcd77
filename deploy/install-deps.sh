#!/bin/sh
# Installs the Debian 12 packages Kiln needs to build, test and run, if any is
# missing. Idempotent: when everything is present it only checks and exits.
set -eu

PKGS="build-essential pkg-config protobuf-c-compiler libprotobuf-c-dev libnats-dev nats-server
librocksdb-dev libcurl4-openssl-dev libssl-dev libjansson-dev libyajl-dev libmicrohttpd-dev libpng-dev zlib1g-dev
libcriterion-dev wrk curl"

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
