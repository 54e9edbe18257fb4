#!/usr/bin/env bash
# Runs every Outpost test: unit tests, black-box tests against the real binary and a real test
# origin on loopback, and the benches in test mode. Installs cmake (needed to build Pingora's
# zlib-ng) when it is missing and we are root.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cmake >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    echo "installing cmake (needed by pingora's libz-ng-sys)" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq cmake >/dev/null
  else
    echo "cmake is missing: run 'sudo apt-get install -y cmake' first" >&2
    exit 1
  fi
fi
cargo test --all-targets --locked "$@"
