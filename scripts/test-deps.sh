#!/usr/bin/env bash
# System packages the test suite needs beyond Python ones (installed only when missing).
#
# - chromium: the dashboard test drives Debian's headless Chromium against a real
#   `wyneos serve` on 127.0.0.1. Installing needs root (CI runs as root on a fresh
#   machine); elsewhere the missing browser is reported and the dashboard test fails
#   with a message saying how to install it.
set -euo pipefail

have_chromium() {
    command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1
}

if ! have_chromium; then
    if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
        echo "test-deps: installing chromium (headless browser for the dashboard test)" >&2
        export DEBIAN_FRONTEND=noninteractive
        log="$(mktemp)"
        if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core; } \
                >"$log" 2>&1; then
            cat "$log" >&2
            rm -f "$log"
            exit 1
        fi
        rm -f "$log"
    else
        echo "test-deps: chromium is missing; install it as root: apt-get install -y chromium" >&2
    fi
fi
