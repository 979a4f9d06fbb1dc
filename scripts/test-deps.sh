#!/usr/bin/env bash
# System packages the test suite needs beyond Python ones (installed only when missing).
#
# - chromium: the dashboard test drives Debian's headless Chromium against a real
#   `wyneos serve` on 127.0.0.1. Installing needs root (CI runs as root on a fresh
#   machine); elsewhere the missing browser is reported and the dashboard test fails
#   with a message saying how to install it.
# - prometheus (for its promtool): tests/test_service_metrics.py checks a live /metrics
#   scrape with `promtool check metrics` and the scrape config of docs/operations.md with
#   `promtool check config` (without it, the client's parser checks the scrape); same rules.
# - etcd-server: the replica tests (tests/test_ha_*.py) and bench/bench_failover.py start a
#   3-member etcd cluster on 127.0.0.1 (Debian's etcd 3.4); same rules as chromium.
set -euo pipefail

apt_install() {  # apt_install WHAT PACKAGE...
    local what="$1"
    shift
    echo "test-deps: installing $*" "($what)" >&2
    export DEBIAN_FRONTEND=noninteractive
    local log
    log="$(mktemp)"
    if ! { apt-get update -qq && apt-get install -y -qq -o DPkg::Lock::Timeout=300 --no-install-recommends "$@"; } >"$log" 2>&1; then
        cat "$log" >&2
        rm -f "$log"
        exit 1
    fi
    rm -f "$log"
}

can_apt() {
    [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1
}

have_chromium() {
    command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1
}

if ! have_chromium; then
    if can_apt; then
        apt_install "headless browser for the dashboard test" chromium fonts-dejavu-core
    else
        echo "test-deps: chromium is missing; install it as root: apt-get install -y chromium" >&2
    fi
fi

have_etcd() {
    command -v etcd >/dev/null 2>&1 || [ -x /usr/bin/etcd ]
}

if ! have_etcd; then
    if can_apt; then
        apt_install "etcd for the replica tests" etcd-server
    else
        echo "test-deps: etcd is missing; install it as root: apt-get install -y etcd-server" >&2
    fi
fi

if ! command -v promtool >/dev/null 2>&1; then
    if can_apt; then
        apt_install "promtool for the metrics tests" prometheus
    else
        echo "test-deps: promtool is missing; install it as root: apt-get install -y prometheus" >&2
    fi
fi
