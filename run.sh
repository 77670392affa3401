#!/usr/bin/env bash
# Builds the hypervisor and boots a demo of several guests in QEMU.
set -euo pipefail
cd "$(dirname "$0")"
exec cargo xtask run "$@"
