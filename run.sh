#!/usr/bin/env bash
# Builds the hypervisor and its guest images, then boots a demo of several guests in
# QEMU (hello, 56 MiB touched on demand, 2 MiB leaves, a copy-on-write clone, and a
# guest stopped at its read-only area while the others go on), printing their output
# and stage-2 reports. Exits non-zero unless every guest ended as expected.
#
# KVM is used only when the host really offers SVM to guests (a `svm` CPU flag and a
# /dev/kvm that is not the paravirtual kvm_pvm); otherwise QEMU's TCG emulates SVM.
# Extra arguments go to `cargo xtask run` (e.g. `./run.sh hello "ondemand mem=128M"`).
set -euo pipefail
cd "$(dirname "$0")"
if ! command -v cargo >/dev/null; then
  echo "run.sh: cargo not found; install Rust with https://rustup.rs" >&2
  exit 1
fi
exec cargo xtask run --emulator auto "$@"
