#!/usr/bin/env bash
# Installs what building and testing Caldera needs on a fresh Debian machine (idempotent).
# - cmake + a C toolchain: libopus is compiled from source by libopus_sys (songbird, opus2).
# - python3 + pip, node + npm: the client-compatibility tests use real Lavalink client libraries
#   (`lavalink` from PyPI, `lavalink-client` from npm, both pinned).
# - iproute2: the IPv6 route planner test builds a network namespace with `ip netns`.
# - ffmpeg: tests make longer or odder media than the committed fixtures (Opus, HLS) at test time.
# - resolver/venv: the resolver's Python environment (yt-dlp with its JavaScript solver scripts
#   and deno), pinned in resolver/requirements.txt; the node finds it there by default.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v cmake >/dev/null 2>&1 || need_apt+=(cmake)
command -v cc >/dev/null 2>&1 || need_apt+=(build-essential)
command -v pkg-config >/dev/null 2>&1 || need_apt+=(pkg-config)
command -v python3 >/dev/null 2>&1 || need_apt+=(python3 python3-pip)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need_apt+=(python3-venv)
command -v git >/dev/null 2>&1 || need_apt+=(git)
command -v node >/dev/null 2>&1 || need_apt+=(nodejs npm)
command -v systemd-analyze >/dev/null 2>&1 || need_apt+=(systemd)
command -v ip >/dev/null 2>&1 || need_apt+=(iproute2)
command -v ffmpeg >/dev/null 2>&1 || need_apt+=(ffmpeg)

if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
  echo "setup: installing ${need_apt[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

# Real Lavalink client libraries used by the compatibility tests, pinned.
if ! python3 -c 'import lavalink, sys; sys.exit(lavalink.__version__ != "5.11.1")' 2>/dev/null; then
  echo "setup: installing the lavalink Python client"
  python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore "lavalink==5.11.1" \
    || python3 -m pip install -q --disable-pip-version-check --break-system-packages "lavalink==5.11.1"
fi

# The resolver's environment: rebuilt when the pins change.
if ! cmp -s resolver/requirements.txt resolver/venv/.installed 2>/dev/null; then
  echo "setup: installing the resolver's Python environment (yt-dlp, deno) into resolver/venv"
  rm -rf resolver/venv
  python3 -m venv resolver/venv
  resolver/venv/bin/python -m pip install -q --disable-pip-version-check --no-cache-dir -r resolver/requirements.txt
  cp resolver/requirements.txt resolver/venv/.installed
fi

if [ ! -d tests/node/node_modules/lavalink-client ]; then
  echo "setup: installing the lavalink-client npm package"
  (cd tests/node && npm ci --no-audit --no-fund --loglevel=error)
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo is missing; install the Rust toolchain (rustup) first" >&2
  exit 1
fi
