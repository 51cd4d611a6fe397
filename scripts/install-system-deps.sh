#!/usr/bin/env bash
# Installs the Debian packages the test suite starts on 127.0.0.1; skips what is already there (so
# `make test` runs it every time: a no-op once installed). Uses sudo only when not root, and fails at
# once with the command to run when that needs a password.
set -euo pipefail
declare -A needs=(
  [redis-server]=redis-server
  [promtool]=prometheus
  [prometheus]=prometheus
  [prometheus-pushgateway]=prometheus-pushgateway
  [prometheus-alertmanager]=prometheus-alertmanager
  [amtool]=prometheus-alertmanager
  [nginx]=nginx
  [openssl]=openssl
  [kubectl]=kubectl
)
missing=()
for tool in "${!needs[@]}"; do
  command -v "$tool" >/dev/null 2>&1 || [ -x "/usr/sbin/$tool" ] || missing+=("${needs[$tool]}")
done
if [ "${#missing[@]}" -gt 0 ]; then
  packages="$(printf '%s\n' "${missing[@]}" | sort -u | tr '\n' ' ')"
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    # Not root: sudo without a password prompt, else stop here with the one command to run.
    if ! command -v sudo >/dev/null 2>&1 || ! sudo -n true 2>/dev/null; then
      echo "error: system packages missing (${packages% }): run \`sudo bash scripts/install-system-deps.sh\`" >&2
      exit 1
    fi
    sudo="sudo -n"
  fi
  export DEBIAN_FRONTEND=noninteractive
  # Never start the packaged services: the tests start their own instances on free ports.
  added_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $sudo tee /usr/sbin/policy-rc.d >/dev/null
    $sudo chmod +x /usr/sbin/policy-rc.d
    added_policy=1
  fi
  $sudo apt-get update -q
  # shellcheck disable=SC2086
  $sudo apt-get install -y -q --no-install-recommends $packages
  [ "$added_policy" -eq 0 ] || $sudo rm -f /usr/sbin/policy-rc.d
fi
