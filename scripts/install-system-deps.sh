#!/usr/bin/env bash
# Installs the Debian packages the test suite starts on 127.0.0.1; skips what is already there.
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
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  # Never start the packaged services: the tests start their own instances on free ports.
  added_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $sudo tee /usr/sbin/policy-rc.d >/dev/null
    $sudo chmod +x /usr/sbin/policy-rc.d
    added_policy=1
  fi
  $sudo apt-get update -q
  $sudo apt-get install -y -q --no-install-recommends $(printf '%s\n' "${missing[@]}" | sort -u)
  [ "$added_policy" -eq 0 ] || $sudo rm -f /usr/sbin/policy-rc.d
fi
