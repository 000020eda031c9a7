#!/usr/bin/env bash
# The kernel crate's tests on aarch64, where its NEON kernels run: cross-compiled for
# aarch64-unknown-linux-gnu and run under qemu's user-mode emulation (correctness only; qemu
# says nothing about speed). Installs what it lacks: the Rust target (rustup), the cross linker
# and qemu (apt, Debian's gcc-aarch64-linux-gnu and qemu-user-static).
set -euo pipefail
cd "$(dirname "$0")/.."
target=aarch64-unknown-linux-gnu
if ! rustup target list --installed | grep -qx "$target"; then
    rustup target add "$target"
fi
if ! command -v aarch64-linux-gnu-gcc >/dev/null || ! command -v qemu-aarch64-static >/dev/null; then
    sudo=""
    if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
    packages=(gcc-aarch64-linux-gnu qemu-user-static)
    $sudo apt-get install -y -q "${packages[@]}" || { $sudo apt-get update -q && $sudo apt-get install -y -q "${packages[@]}"; } || {
        echo "error: could not install ${packages[*]}: install them (apt) to run the aarch64 tests" >&2
        exit 1
    }
fi
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64-static -L /usr/aarch64-linux-gnu"
cargo test --release --target "$target" -p ferrollm-kernels
