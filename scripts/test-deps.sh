#!/usr/bin/env bash
# System packages the test suite needs beyond Python ones (installed only when missing).
set -euo pipefail
