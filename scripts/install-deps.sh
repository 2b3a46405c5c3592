#!/usr/bin/env bash
# Installs the Debian packages understudy needs to build and run (make demo), and with
# --test also the real daemons only the tests use (make test): Prometheus, Slurm and
# munge, network tools for the partition tests, headless Chromium for the report.
# Idempotent: packages already present are skipped; nothing is done when all are there.
set -euo pipefail

packages=(
  build-essential cmake ninja-build pkg-config ccache
  libcaf-dev libssl-dev
  liblmdb-dev lmdb-utils
  capnproto libcapnp-dev
  libxxhash-dev zlib1g-dev
  catch2
  libtoml11-dev libcli11-dev libspdlog-dev prometheus-cpp-dev
  libcurl4-openssl-dev nlohmann-json3-dev libboost-dev etcd-server etcd-client
)
if [ "${1:-}" = "--test" ]; then
  packages+=(iproute2 nftables prometheus slurmctld slurmd slurm-client munge nginx-light
    chromium-headless-shell)
elif [ $# -gt 0 ]; then
  echo "usage: $0 [--test]" >&2
  exit 2
fi

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

echo "understudy: installing missing packages: ${missing[*]}"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "understudy: need root (or sudo) to install: ${missing[*]}" >&2
    exit 1
  fi
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
