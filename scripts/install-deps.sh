#!/usr/bin/env bash
# Installs the system packages Sluice builds with (Debian/Ubuntu): cmake and a C++ compiler for the
# statically linked SentencePiece library, and python3 for the pipeline tests' exec-stage programs.
# Skips what is already there; needs root or sudo to install.
set -euo pipefail
missing=()
command -v cmake >/dev/null 2>&1 || missing+=(cmake)
command -v c++ >/dev/null 2>&1 || missing+=(g++)
command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
fi
command -v cargo >/dev/null 2>&1 || { echo "cargo not found: install Rust from rustup first" >&2; exit 1; }
