#!/usr/bin/env bash
# Runs every Outpost test: unit tests, black-box tests against the real binary and a real test
# origin on loopback, and the benches in test mode. Installs cmake (needed to build Pingora's
# zlib-ng) and nats-server (fleet purge tests) when they are missing and we are root.
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
# the fleet purge tests run against a real nats-server (skipped with a message without one)
if ! command -v nats-server >/dev/null 2>&1 && [ ! -x /usr/sbin/nats-server ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "installing nats-server (fleet purge tests)" >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nats-server >/dev/null) ||
      echo "nats-server could not be installed: the fleet purge tests will be skipped" >&2
  else
    echo "nats-server is missing: the fleet purge tests will be skipped (apt-get install nats-server)" >&2
  fi
fi
cargo test --all-targets --locked "$@"
