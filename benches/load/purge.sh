#!/usr/bin/env bash
# Purge at scale: fill Outpost with TAGGED objects carrying one tag plus as many untagged ones
# (both tiers), purge the tag, and report how long the purge took to answer, that every sampled
# tagged object is refetched and every sampled other one still a hit, and how long the
# background pass took to remove them and retire the purge. Sends traffic to 127.0.0.1 only.
#
# Knobs (environment):
#   TAGGED=100000        objects carrying the purged tag (and as many without it)
#   OUTPOST_BIN=path     binary to run (default: target/release/outpost, built if missing)
#   KEEP_TMP=1           keep the work directory
set -euo pipefail

TAGGED=${TAGGED:-100000}
KEEP_TMP=${KEEP_TMP:-0}
[[ $TAGGED =~ ^[1-9][0-9]*$ ]] || { echo "TAGGED must be a positive integer" >&2; exit 1; }
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$SCRIPT_DIR/../.." && pwd)
BIN=${OUTPOST_BIN:-$REPO/target/release/outpost}
PORT_ORIGIN=18100 PORT=18101 PORT_ADMIN=18102 PORT_METRICS=18103
TOKEN=bench-token

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
for tool in nginx wrk curl python3; do
  command -v "$tool" >/dev/null || { echo "needs $tool (apt-get install nginx-light wrk curl python3)" >&2; exit 1; }
done
if [[ ! -x $BIN ]]; then
  log "building $BIN"
  (cd "$REPO" && cargo build --release --locked)
fi

WORK=$(mktemp -d /tmp/outpost-purge-bench.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  [[ -f $WORK/nginx.pid ]] && kill "$(cat "$WORK/nginx.pid")" 2>/dev/null || true
  [[ $KEEP_TMP == 1 ]] || rm -rf "$WORK"
}
trap cleanup EXIT

# origin: /bulk/* tagged, /other/* not; both cacheable for an hour
mkdir -p "$WORK/nginx"
cat >"$WORK/nginx.conf" <<EOF
daemon on; worker_processes 1; pid $WORK/nginx.pid; error_log $WORK/nginx/error.log;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $WORK/nginx; proxy_temp_path $WORK/nginx; fastcgi_temp_path $WORK/nginx;
  uwsgi_temp_path $WORK/nginx; scgi_temp_path $WORK/nginx;
  server {
    listen 127.0.0.1:$PORT_ORIGIN;
    location /bulk/ { add_header Surrogate-Key "bulk item" always; add_header Cache-Control "max-age=3600"; return 200 "b"; }
    location /other/ { add_header Cache-Control "max-age=3600"; return 200 "o"; }
  }
}
EOF
nginx -c "$WORK/nginx.conf" -p "$WORK/nginx"

cat >"$WORK/outpost.toml" <<EOF
[node]
name = "bench"
threads = 2
[access_log]
enabled = false
[listen]
http = ["127.0.0.1:$PORT"]
[admin]
listen = "127.0.0.1:$PORT_ADMIN"
token = "$TOKEN"
[metrics]
listen = "127.0.0.1:$PORT_METRICS"
[cache]
dir = "$WORK/cache"
memory_size = "1GiB"
disk_size = "8GiB"
[purge]
lurker_interval = "1s"
[[origins]]
name = "origin"
url = "http://127.0.0.1:$PORT_ORIGIN"
[[rules]]
name = "default"
action = "cache"
EOF
"$BIN" run --config "$WORK/outpost.toml" >"$WORK/outpost.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$PORT_ADMIN/healthz" >/dev/null && break; sleep 0.1; done

metric() { curl -fs "http://127.0.0.1:$PORT_METRICS/metrics" | awk -v m="$1" '$1 == m {print $2}'; }

# fill: one wrk thread walks /bulk/1..N then /other/1..N, then repeats /other/1 (hits), paced
# below what the disk writer takes (about 2,500 objects/s here: faster, and writes are dropped)
cat >"$WORK/fill.lua" <<EOF
local n, total = 0, $TAGGED
delay = function() return 5 end
request = function()
  n = n + 1
  if n <= total then return wrk.format(nil, "/bulk/" .. n) end
  if n <= 2 * total then return wrk.format(nil, "/other/" .. (n - total)) end
  return wrk.format(nil, "/other/1")
end
EOF
log "filling $((2 * TAGGED)) objects"
want=$((2 * TAGGED))
started=$(date +%s.%N)
# one walk; objects still missing afterwards (a dropped disk write) do not matter: the sample
# below only counts what it finds
wrk -t1 -c8 -d"$((TAGGED / 600 + 10))s" -s "$WORK/fill.lua" "http://127.0.0.1:$PORT" >"$WORK/fill.txt"
last=-1
for _ in $(seq 120); do
  have=$(metric outpost_cache_disk_objects); have=${have%.*}
  [[ $have -ge $want || $have == "$last" ]] && break
  last=$have
  sleep 1
done
log "filled in $(python3 -c "print(round($(date +%s.%N) - $started))") s"
log "stored: memory $(metric outpost_cache_memory_objects), disk $(metric outpost_cache_disk_objects)"

answer() {
  curl -s -o "$WORK/purge.json" -w '%{time_total}' -X POST -H "Authorization: Bearer $TOKEN" \
    -H 'Content-Type: application/json' -d "$1" "http://127.0.0.1:$PORT_ADMIN/purge"
}
t=$(answer '{"tags": ["bulk"]}')
log "purge answered in ${t}s: $(cat "$WORK/purge.json")"
purge_ms=$(python3 -c "print(round($t * 1000, 1))")

sample() {
  python3 - "$PORT" "$TAGGED" <<'EOF'
import http.client, random, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
c = http.client.HTTPConnection("127.0.0.1", port)
def status(path):
    c.request("GET", path); r = c.getresponse(); r.read()
    return r.getheader("Cache-Status") or ""
random.seed(7)
tagged = [f"/bulk/{random.randint(1, n)}" for _ in range(1000)]
others = [f"/other/{random.randint(1, n)}" for _ in range(1000)]
refetched = sum("fwd=" in status(p) for p in set(tagged))
hits = sum("hit" in status(p) and "fwd=" not in status(p) for p in set(others))
print(f"{refetched} {len(set(tagged))} {hits} {len(set(others))}")
EOF
}
read -r refetched sampled_t hits sampled_o < <(sample)
log "after the purge: $refetched of $sampled_t sampled tagged objects refetched, $hits of $sampled_o others hits"

for _ in $(seq 600); do
  [[ $(metric outpost_purge_bans) == 0 ]] && break
  sleep 1
done
pass=$(grep 'purge pass' "$WORK/outpost.log" | grep -v 'removed=0 ' | tail -1)
log "pass: $pass"
removed=$(metric 'outpost_purge_swept_objects_total{action="removed"}')
printf '\n%-46s %s\n' "objects stored (tagged + others)" "$want"
printf '%-46s %s ms\n' "purge {\"tags\":[\"bulk\"]} answered in" "$purge_ms"
printf '%-46s %s / %s\n' "sampled tagged objects refetched after it" "$refetched" "$sampled_t"
printf '%-46s %s / %s\n' "sampled other objects still hits" "$hits" "$sampled_o"
printf '%-46s %s\n' "objects removed by the background pass" "${removed:-0}"
printf '%-46s %s\n' "purges in force afterwards" "$(metric outpost_purge_bans)"
printf '%-46s %s\n' "pass (log)" "$(sed -n 's/.*took_ms=\([0-9]*\).*/\1 ms/p' <<<"$pass")"
