#!/usr/bin/env bash
# Installs the Debian packages that build and run the images without a Docker daemon (buildah,
# podman, runc; debootstrap for the local base image); skips what is already there.
set -euo pipefail
declare -A needs=(
  [buildah]=buildah
  [podman]=podman
  [runc]=runc
  [debootstrap]=debootstrap
)
missing=()
for tool in "${!needs[@]}"; do
  command -v "$tool" >/dev/null 2>&1 || [ -x "/usr/sbin/$tool" ] || missing+=("${needs[$tool]}")
done
if [ "${#missing[@]}" -gt 0 ]; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -q
  $sudo apt-get install -y -q --no-install-recommends $(printf '%s\n' "${missing[@]}" | sort -u)
fi
