#!/usr/bin/env bash
# Soak: a long mixed load on one Outpost node, to find what breaks or grows with time (not a
# CI test). Hits on a hot set, misses over a large key space (the memory tier overflows, the
# disk tier fills and evicts), no-store passes, a purge every second (URL, prefix and tag in
# turn), a configuration reload every minute, and an origin that fails a share of requests
# with 503. The load is paced at LOAD_PCT of the node's capacity measured on the same mix.
# Sends traffic to 127.0.0.1 only.
#
# Reports each minute: requests, node errors, RSS, open file descriptors, disk usage; at the
# end: errors other than the origin's own (want 0) and the RSS / fd spread after warm-up (want
# within 10%). See benches/load/README.md ("Soak").
#
# Knobs (environment):
#   MINUTES=30           length of the paced run
#   LOAD_PCT=80          pace, in percent of the measured capacity
#   KEYS=1000000         distinct miss keys (1 KiB each)
#   HOT=1000             distinct hit keys
#   FAIL_PCT=1           share of origin responses that are 503 (nginx split_clients)
#   MEMORY_SIZE=64MiB DISK_SIZE=512MiB THREADS=1
#   WARMUP_MINUTES=5     minutes left out of the RSS / fd spread
#   OUTPOST_BIN=path     binary to run (default: target/release/outpost, built if missing)
#   PROXY_CPU=0 LOAD_CPU=1   CPUs for the node and for wrk + origin
#   KEEP_TMP=1           keep the work directory (logs, wrk output)
set -euo pipefail

MINUTES=${MINUTES:-30}
LOAD_PCT=${LOAD_PCT:-80}
KEYS=${KEYS:-1000000}
HOT=${HOT:-1000}
FAIL_PCT=${FAIL_PCT:-1}
MEMORY_SIZE=${MEMORY_SIZE:-64MiB}
DISK_SIZE=${DISK_SIZE:-512MiB}
THREADS=${THREADS:-1}
WARMUP_MINUTES=${WARMUP_MINUTES:-5}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
KEEP_TMP=${KEEP_TMP:-0}
for v in MINUTES LOAD_PCT KEYS HOT FAIL_PCT THREADS WARMUP_MINUTES PROXY_CPU LOAD_CPU; do
  [[ ${!v} =~ ^[0-9]+$ ]] || { echo "$v must be a non-negative integer, not '${!v}'" >&2; exit 1; }
done
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$SCRIPT_DIR/../.." && pwd)
BIN=${OUTPOST_BIN:-$REPO/target/release/outpost}
PORT_ORIGIN=18200 PORT=18201 PORT_ADMIN=18202 PORT_METRICS=18203
TOKEN=soak-token

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
for tool in nginx wrk curl python3 taskset; do
  command -v "$tool" >/dev/null || { echo "needs $tool (apt-get install nginx-light wrk curl python3 util-linux)" >&2; exit 1; }
done
if [[ ! -x $BIN ]]; then
  log "building $BIN"
  (cd "$REPO" && cargo build --release --locked)
fi

WORK=$(mktemp -d /tmp/outpost-soak.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  [[ -f $WORK/nginx.pid ]] && kill "$(cat "$WORK/nginx.pid")" 2>/dev/null || true
  if [[ $KEEP_TMP == 1 ]]; then log "work directory kept: $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

# origin: 1 KiB bodies; /m/N carry tags (m<N mod 100>) for tag purges; FAIL_PCT% of all
# requests get 503 with a body the load script recognises as the origin's own failure
mkdir -p "$WORK/nginx" "$WORK/www"
head -c 1024 /dev/urandom >"$WORK/www/body"
chmod a+rx "$WORK" && chmod -R a+rX "$WORK/www"   # nginx's workers run as another user
cat >"$WORK/nginx.conf" <<EOF
daemon on; worker_processes 1; pid $WORK/nginx.pid; error_log $WORK/nginx/error.log;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 100000000;
  client_body_temp_path $WORK/nginx; proxy_temp_path $WORK/nginx; fastcgi_temp_path $WORK/nginx;
  uwsgi_temp_path $WORK/nginx; scgi_temp_path $WORK/nginx;
  open_file_cache max=16 inactive=1h;
  split_clients "\${request_id}" \$origin_fails { ${FAIL_PCT}% 1; * 0; }
  map \$uri \$tag { ~^/m/[0-9]*?([0-9]?[0-9])\$ "m\$1"; default ""; }
  server {
    listen 127.0.0.1:$PORT_ORIGIN backlog=4096;
    root $WORK/www;
    if (\$origin_fails) { return 503 "origin-fail\n"; }
    location /hot/ { add_header Cache-Control "max-age=3600"; try_files /body =404; }
    location /m/ { add_header Cache-Control "max-age=3600"; add_header Surrogate-Key "m \$tag"; try_files /body =404; }
    location = /pass { add_header Cache-Control "no-store"; try_files /body =404; }
    location / { return 404; }
  }
}
EOF
taskset -c "$LOAD_CPU" nginx -c "$WORK/nginx.conf" -p "$WORK/nginx"

write_config() { # the node's config; $1: a comment line that changes on each reload
  cat >"$WORK/outpost.toml" <<EOF
# $1
[node]
name = "soak"
threads = $THREADS
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
tiers = "memory+disk"
memory_size = "$MEMORY_SIZE"
disk_size = "$DISK_SIZE"
[[origins]]
name = "origin"
url = "http://127.0.0.1:$PORT_ORIGIN"
[[rules]]
name = "default"
action = "cache"
EOF
}
write_config "generation 0"
"$BIN" check --config "$WORK/outpost.toml" >/dev/null
taskset -c "$PROXY_CPU" "$BIN" run --config "$WORK/outpost.toml" >"$WORK/outpost.log" 2>&1 &
NODE=$!
PIDS+=("$NODE")
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$PORT_ADMIN/healthz" >/dev/null && break; sleep 0.1; done
curl -fs "http://127.0.0.1:$PORT_ADMIN/healthz" >/dev/null || { tail "$WORK/outpost.log" >&2; exit 1; }

admin() { # method path [json body]
  curl -s -o /dev/null -w '%{http_code}' -X "$1" -H "Authorization: Bearer $TOKEN" \
    -H 'Content-Type: application/json' ${3:+-d "$3"} "http://127.0.0.1:$PORT_ADMIN$2"
}
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$NODE/status"; }
fds() { find "/proc/$NODE/fd" -mindepth 1 -maxdepth 1 | wc -l; }
disk_bytes() { du -s --block-size=1 "$WORK/cache" 2>/dev/null | cut -f1; }  # as du counts (blocks); temporary files come and go

# the mix: 60% hits over HOT keys, 30% misses over KEYS keys, 10% no-store passes; a 5xx that
# is not the origin's "origin-fail" and any other unexpected status is the node's error;
# DELAY_MS > 0 paces each connection
cat >"$WORK/mix.lua" <<EOF
local hot, keys, delay_ms = $HOT, $KEYS, tonumber(os.getenv("DELAY_MS") or "0")
local threads = {}
-- globals, not locals: done() reads them from each thread with thread:get()
ok, origin_fail, node_err, first_err = 0, 0, 0, nil
setup = function(thread) table.insert(threads, thread) end
init = function() math.randomseed(os.time() + math.floor(os.clock() * 1e6)) end
if delay_ms > 0 then delay = function() return delay_ms end end
request = function()
  local r = math.random(100)
  if r <= 60 then return wrk.format(nil, "/hot/" .. math.random(hot)) end
  if r <= 90 then return wrk.format(nil, "/m/" .. math.random(keys)) end
  return wrk.format(nil, "/pass")
end
response = function(status, headers, body)
  if status == 200 then ok = ok + 1
  elseif status == 503 and body and body:find("origin-fail", 1, true) then origin_fail = origin_fail + 1
  else
    node_err = node_err + 1
    if not first_err then first_err = status .. " " .. (headers["Cache-Status"] or headers["cache-status"] or "") .. " " .. (body or ""):sub(1, 120) end
  end
end
done = function(summary, latency, requests)
  local t = {ok = 0, origin_fail = 0, node_err = 0}
  local first
  for _, th in ipairs(threads) do
    t.ok = t.ok + th:get("ok"); t.origin_fail = t.origin_fail + th:get("origin_fail")
    t.node_err = t.node_err + th:get("node_err"); first = first or th:get("first_err")
  end
  local e = summary.errors
  io.write(string.format("MIX ok=%d origin_fail=%d node_err=%d socket_errors=%d/%d/%d/%d/%d p99_ms=%.2f\n",
    t.ok, t.origin_fail, t.node_err, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(99) / 1000))
  if first then io.write("FIRST_NODE_ERROR " .. first:gsub("[\r\n]", " ") .. "\n") end
end
EOF
mix() { # duration connections delay_ms out
  DELAY_MS=$3 taskset -c "$LOAD_CPU" wrk -t1 -c"$2" -d"$1" --latency --timeout 10s \
    -s "$WORK/mix.lua" "http://127.0.0.1:$PORT" >"$4" 2>&1
}
rps_of() { awk '/^Requests\/sec/ {print int($2)}' "$1"; }

log "warm-up: hot keys, then 20 s of the mix at full speed"
for i in $(seq "$HOT"); do printf 'url = "http://127.0.0.1:%s/hot/%s"\noutput = "/dev/null"\n' "$PORT" "$i"; done >"$WORK/hot.curl"
curl -s -K "$WORK/hot.curl"
mix 20s 64 0 "$WORK/capacity.txt"
CAPACITY=$(rps_of "$WORK/capacity.txt")
TARGET=$((CAPACITY * LOAD_PCT / 100))
# The pace: each connection waits DELAY_MS between its requests, and the load runs a minute at
# a time; after each minute the connections are scaled by target / achieved (a request also
# waits for its answer, and the machine's speed changes).
DELAY_MS=10
CONNS=$((TARGET * DELAY_MS / 1000 + 1))
log "capacity on the mix: $CAPACITY req/s; pacing at $TARGET req/s for $MINUTES min"

metric() { # name [label substring]: the sum of the family's samples (with that label)
  curl -fs "http://127.0.0.1:$PORT_METRICS/metrics" |
    awk -v m="$1" -v l="${2:-}" '($1 == m || index($1, m "{") == 1) && index($1, l) {s += $2} END {printf "%d\n", s}'
}
field() { sed -n "s/.*[ ^]$1=\([0-9]*\).*/\1/p" "$2" | head -1; }  # MIX line fields
row='%-6s %8s %8s %8s %8s %6s %8s %6s %8s %9s %9s %7s %7s\n'
printf "$row" minute req/s ok origin5xx node_err sockerr p99_ms conns rss_MiB fds disk_MiB queue_MiB objects >"$WORK/table.txt"
cat "$WORK/table.txt" >&2
LAST_RPS=0
purges=0 purge_fail=0 reloads=0 reload_fail=0 total_ok=0 total_origin=0 total_node=0 total_sock=0
declare -a RSS FDS
: >"$WORK/first_errors.txt"
for minute in $(seq "$MINUTES"); do
  write_config "generation $minute"
  code=$(admin POST /config/reload)
  [[ $code == 200 ]] && reloads=$((reloads + 1)) || { reload_fail=$((reload_fail + 1)); log "reload answered $code"; }
  mix 60s "$CONNS" "$DELAY_MS" "$WORK/minute.txt" &
  WRK=$!
  PIDS+=("$WRK")
  start=$(date +%s)
  second=0
  while kill -0 "$WRK" 2>/dev/null; do
    # one purge a second by the wall clock: a URL, a prefix and a tag in turn
    now=$(date +%s)
    if ((now - start >= second)); then
      k=$((RANDOM * 32768 + RANDOM))
      case $((second % 3)) in
        0) body="{\"url\": \"http://127.0.0.1:$PORT/m/$((k % KEYS + 1))\"}" ;;
        1) body="{\"prefix\": \"/m/$((k % 1000))\"}" ;;
        *) body="{\"tags\": [\"m$((k % 100))\"]}" ;;
      esac
      code=$(admin POST /purge "$body")
      [[ $code == 200 ]] && purges=$((purges + 1)) || { purge_fail=$((purge_fail + 1)); log "purge $body answered $code"; }
      second=$((second + 1))
    fi
    sleep 0.2
  done
  wait "$WRK" || true
  cat "$WORK/minute.txt" >>"$WORK/soak.txt"
  rps=$(rps_of "$WORK/minute.txt"); rps=${rps:-0}
  ok=$(field ok "$WORK/minute.txt"); origin=$(field origin_fail "$WORK/minute.txt"); node=$(field node_err "$WORK/minute.txt")
  sock=$(sed -n 's/.*socket_errors=\([0-9]*\)\/\([0-9]*\)\/\([0-9]*\)\/[0-9]*\/\([0-9]*\).*/\1 \2 \3 \4/p' "$WORK/minute.txt" | awk '{print $1 + $2 + $3 + $4}')
  p99=$(sed -n 's/.*p99_ms=\([0-9.]*\).*/\1/p' "$WORK/minute.txt")
  grep '^FIRST_NODE_ERROR' "$WORK/minute.txt" >>"$WORK/first_errors.txt" || true
  total_ok=$((total_ok + ${ok:-0})); total_origin=$((total_origin + ${origin:-0}))
  total_node=$((total_node + ${node:-0})); total_sock=$((total_sock + ${sock:-0}))
  RSS[minute]=$(rss_kib || echo 0)
  FDS[minute]=$(fds || echo 0)
  printf "$row" "$minute" "$rps" "${ok:-?}" "${origin:-?}" "${node:-?}" "${sock:-?}" "${p99:-?}" "$CONNS" \
    "$((RSS[minute] / 1024))" "${FDS[minute]}" "$(($(disk_bytes) / 1048576))" \
    "$(($(metric outpost_cache_disk_write_queue_bytes) / 1048576))" \
    "$(metric outpost_cache_disk_objects)" | tee -a "$WORK/table.txt" >&2
  kill -0 "$NODE" 2>/dev/null || { log "the node exited"; break; }
  # more connections only while they bring more requests: past the node's sustained capacity
  # (lower than the 20 s measurement once the disk tier is full) they would only queue
  if ((rps > 0)) && { ((rps < TARGET && rps > LAST_RPS * 102 / 100)) || ((rps >= TARGET)); }; then
    NEXT=$((CONNS * TARGET / rps))
    ((NEXT <= CONNS * 3 / 2)) || NEXT=$((CONNS * 3 / 2))
    CONNS=$NEXT
    ((CONNS >= 1)) || CONNS=1
    ((CONNS <= 4000)) || CONNS=4000
  fi
  LAST_RPS=$rps
done
alive=yes
kill -0 "$NODE" 2>/dev/null || alive="NO (exited)"
# what stays when the load stops: live data (the memory tier, the disk index, the write queue
# draining) against what the allocator kept
idle_rss=0
if [[ $alive == yes ]]; then
  sleep 30
  idle_rss=$(rss_kib || echo 0)
fi

cat "$WORK/table.txt"
echo
echo "requests answered 200: $total_ok; the origin's own 503: $total_origin; node errors (any other answer): $total_node; socket errors: $total_sock"
head -3 "$WORK/first_errors.txt"
spread() { # name values... -> min max spread% over the minutes after warm-up
  local name=$1; shift
  python3 - "$name" "$@" <<'EOF'
import sys
name, vals = sys.argv[1], [int(v) for v in sys.argv[2:] if v]
if not vals: print(f"{name}: no samples after warm-up"); sys.exit()
lo, hi = min(vals), max(vals)
print(f"{name} after warm-up: min {lo} max {hi} spread {100 * (hi - lo) / lo:.1f}% (first {vals[0]}, last {vals[-1]})")
EOF
}
after=()
for m in "${!RSS[@]}"; do ((m > WARMUP_MINUTES)) && after+=("${RSS[m]}"); done
spread "RSS KiB" "${after[@]}"
after=()
for m in "${!FDS[@]}"; do ((m > WARMUP_MINUTES)) && after+=("${FDS[m]}"); done
spread "open fds" "${after[@]}"
disk_limit=$(python3 -c "
import re; s='$DISK_SIZE'; m=re.fullmatch(r'(\d+)\s*([KMGT]i?B|B)?', s)
u={'B':1,'KiB':1<<10,'MiB':1<<20,'GiB':1<<30,'TiB':1<<40,'KB':10**3,'MB':10**6,'GB':10**9,'TB':10**12}
print(int(m.group(1)) * u[m.group(2) or 'B'])")
echo "disk: $(disk_bytes) bytes used of disk_size $disk_limit"
echo "purges: $purges answered 200, $purge_fail not; reloads: $reloads answered 200, $reload_fail not"
echo "node alive at the end: $alive; 30 s after the load: RSS $((idle_rss / 1024)) MiB, memory tier $(($(metric outpost_cache_memory_bytes) / 1048576)) MiB, disk write queue $(($(metric outpost_cache_disk_write_queue_bytes) / 1048576)) MiB, $(metric outpost_cache_disk_objects) disk objects"
echo "node log lines: $(wc -l <"$WORK/outpost.log") (ERROR $(grep -c ' ERROR ' "$WORK/outpost.log" || true), WARN $(grep -c ' WARN ' "$WORK/outpost.log" || true))"
grep -E ' (ERROR|WARN) ' "$WORK/outpost.log" | sed -E 's/^[^ ]+ +//' | cut -c1-160 | sort | uniq -c | sort -rn | head -10 || true
