#!/usr/bin/env bash
# Runs an Outpost node on conf/outpost.toml in front of a local demo origin and shows a HIT.
#   origin: python3's http.server on 127.0.0.1:8000 serving conf/demo-site/
#   node:   http://127.0.0.1:8080 (metrics :9090, admin :9091), cache dir var/cache
# The node keeps running until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cmake >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq cmake >/dev/null
  else
    echo "cmake is missing: run 'sudo apt-get install -y cmake' first" >&2
    exit 1
  fi
fi
cargo build --release --locked
python3 -m http.server 8000 --bind 127.0.0.1 --directory conf/demo-site >/dev/null 2>&1 &
ORIGIN=$!
./target/release/outpost run --config conf/outpost.toml &
NODE=$!
trap 'kill $NODE $ORIGIN 2>/dev/null || true' EXIT INT TERM
for _ in $(seq 100); do
  curl -fs -o /dev/null http://127.0.0.1:8000/ && curl -fs -o /dev/null http://127.0.0.1:9090/metrics && break
  sleep 0.1
done
for i in 1 2; do
  echo "--- request $i: curl -si http://127.0.0.1:8080/static/hello.txt"
  curl -si http://127.0.0.1:8080/static/hello.txt | grep -iE '^(HTTP/|cache-status|age)'
done
echo "--- node running on http://127.0.0.1:8080 (metrics: http://127.0.0.1:9090/metrics); Ctrl-C stops it"
wait $NODE
