#!/usr/bin/env bash
# The aarch64 cross compiler and user-mode emulator that test the NEON kernel paths on an x86-64 machine
# (tests/cpp/test_kernel_paths.py): Debian's g++-aarch64-linux-gnu and qemu-user. Installs them with apt-get
# only when they are missing; prints why and exits 1 when that is impossible here.
set -euo pipefail
missing=()
command -v aarch64-linux-gnu-g++ >/dev/null || missing+=(g++-aarch64-linux-gnu)
command -v qemu-aarch64 >/dev/null || missing+=(qemu-user)
[ ${#missing[@]} -eq 0 ] && exit 0
if ! command -v apt-get >/dev/null; then
  echo "install_cross_toolchain: ${missing[*]} missing and no apt-get here (install them by hand)" >&2
  exit 1
fi
sudo=()
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then sudo=(sudo -n); else
    echo "install_cross_toolchain: ${missing[*]} missing; installing needs root (sudo without a password)" >&2
    exit 1
  fi
fi
echo "install_cross_toolchain: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null 2>&1 ||
  { "${sudo[@]}" apt-get update -qq >/dev/null && "${sudo[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null; } ||
  { echo "install_cross_toolchain: apt-get could not install ${missing[*]}" >&2; exit 1; }
command -v aarch64-linux-gnu-g++ >/dev/null && command -v qemu-aarch64 >/dev/null
