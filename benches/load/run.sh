#!/usr/bin/env bash
# Load benchmark: Outpost vs nginx proxy_cache vs Varnish, one worker each, same origin.
# See benches/load/README.md. Sends traffic to 127.0.0.1 only.
#
# Knobs (environment):
#   DURATION=10s         wrk duration of each measured run
#   CONNECTIONS=64       wrk connections (one wrk thread)
#   WARMUP=2s            wrk warm-up run before each measured run (0 = none)
#   ONLY="outpost nginx varnish"   which proxies to run (in that order)
#   SKIP_BUILD=1         do not run `cargo build --release`
#   OUTPOST_BIN=path     use this binary (implies no build)
#   OUTPOST_ARGS="..."   full argument list for outpost ({config} = the generated TOML);
#                        default: detected from `outpost --help` (`run`/`serve` subcommand or none)
#   MEM_OBJECTS=100000   objects filled for the memory-per-object row
#   KEEP_TMP=1           keep the proxy cache directories (wrk outputs and logs are always kept)
#   PROXY_CPU=0 LOAD_CPU=1   CPUs for the proxy and for wrk + origin
set -euo pipefail

DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-64}
WARMUP=${WARMUP:-2s}
ONLY=${ONLY:-"outpost nginx varnish"}
SKIP_BUILD=${SKIP_BUILD:-0}
MEM_OBJECTS=${MEM_OBJECTS:-100000}
KEEP_TMP=${KEEP_TMP:-0}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
KEYS=10000

PORT_ORIGIN=18000
PORT_NGINX=18081
PORT_VARNISH=18082
PORT_OUTPOST=18083
PORT_OUTPOST_ADMIN=18093
PORT_OUTPOST_METRICS=18094

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$SCRIPT_DIR/../.." && pwd)

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
warn() { printf '[%(%H:%M:%S)T] WARNING: %s\n' -1 "$*" >&2; WARNINGS+=("$*"); }
die() { printf 'ERROR: %s\n' "$*" >&2; exit 1; }
WARNINGS=()

for p in $ONLY; do
  case $p in outpost|nginx|varnish) ;; *) die "ONLY: unknown proxy '$p' (outpost nginx varnish)";; esac
done
want() { [[ " $ONLY " == *" $1 "* ]]; }

# ---------------------------------------------------------------------------------------------
# Tools
# ---------------------------------------------------------------------------------------------
install_missing() {
  local pkgs=()
  command -v nginx >/dev/null || pkgs+=(nginx-light)
  command -v varnishd >/dev/null || pkgs+=(varnish)
  command -v wrk >/dev/null || pkgs+=(wrk)
  command -v curl >/dev/null || pkgs+=(curl)
  command -v taskset >/dev/null || pkgs+=(util-linux)
  command -v pgrep >/dev/null || pkgs+=(procps)
  if want outpost && [[ -z ${OUTPOST_BIN:-} && $SKIP_BUILD != 1 ]]; then
    command -v cmake >/dev/null || pkgs+=(cmake)
  fi
  ((${#pkgs[@]})) || return 0
  [[ $(id -u) == 0 ]] || die "missing ${pkgs[*]}: run as root or install them"
  log "installing ${pkgs[*]}"
  # Keep the packages' own services (nginx on :80, varnish on :6081) from starting.
  local policy=/usr/sbin/policy-rc.d made_policy=0
  if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"; chmod +x "$policy"; made_policy=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${pkgs[@]}" || { ((made_policy)) && rm -f "$policy"; die "apt-get install failed"; }
  ((made_policy)) && rm -f "$policy"
  return 0
}
install_missing

NGINX=$(command -v nginx)
VARNISHD=$(command -v varnishd)
CLK_TCK=$(getconf CLK_TCK)
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for port in $PORT_ORIGIN $PORT_NGINX $PORT_VARNISH $PORT_OUTPOST $PORT_OUTPOST_ADMIN $PORT_OUTPOST_METRICS; do
  port_in_use "$port" && die "port $port on 127.0.0.1 is in use (another benchmark still running?)"
done

# ---------------------------------------------------------------------------------------------
# Build Outpost
# ---------------------------------------------------------------------------------------------
if want outpost; then
  if [[ -z ${OUTPOST_BIN:-} ]]; then
    if [[ $SKIP_BUILD != 1 ]]; then
      log "building outpost (cargo build --release)"
      (cd "$REPO" && cargo build --release) || die "cargo build --release failed"
    fi
    OUTPOST_BIN=$REPO/target/release/outpost
  fi
  [[ -x $OUTPOST_BIN ]] || die "outpost binary not found: $OUTPOST_BIN (unset SKIP_BUILD or set OUTPOST_BIN)"
fi

# ---------------------------------------------------------------------------------------------
# Temp dir, process bookkeeping, cleanup
# ---------------------------------------------------------------------------------------------
T=$(mktemp -d /tmp/outpost-load.XXXXXX)
chmod 755 "$T"   # nginx workers (nobody) and the varnish child (vcache) read/write below it
STARTED=()       # pids of every process this script started (roots of process trees)

descendants() { # pid -> the pid and all its descendants
  local p=$1 c
  echo "$p"
  for c in $(pgrep -P "$p" 2>/dev/null || true); do descendants "$c"; done
}

kill_tree() { # pid [timeout_s]
  local root=$1 wait_s=${2:-5} pids i
  pids=$(descendants "$root")
  kill -TERM $pids 2>/dev/null || true
  for ((i = 0; i < wait_s * 10; i++)); do
    local alive=0 p
    for p in $pids; do kill -0 "$p" 2>/dev/null && alive=1; done
    ((alive)) || break
    sleep 0.1
  done
  kill -KILL $pids 2>/dev/null || true
  wait "$root" 2>/dev/null || true
}

cleanup() {
  local rc=$? p
  trap - EXIT INT TERM
  for p in "${STARTED[@]}"; do kill_tree "$p" 3; done
  if [[ $KEEP_TMP != 1 && -n ${T:-} && -d $T ]]; then
    rm -rf "$T/nginx/cache" "$T/outpost/cache" "$T/varnish/work" "$T/origin/www"
  fi
  [[ -n ${T:-} ]] && echo "raw wrk outputs and logs: $T" >&2
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------------------------------------
# Origin: nginx on CPU $LOAD_CPU
# ---------------------------------------------------------------------------------------------
CC_HIT='public, max-age=3600'
nginx_temp_paths() { # dir
  cat <<EOF
  client_body_temp_path $1/tmp/body;
  proxy_temp_path $1/tmp/proxy;
  fastcgi_temp_path $1/tmp/fastcgi;
  uwsgi_temp_path $1/tmp/uwsgi;
  scgi_temp_path $1/tmp/scgi;
EOF
}

setup_origin() {
  local d=$T/origin
  mkdir -p "$d/www" "$d/tmp"
  head -c 1024 /dev/urandom >"$d/www/1k"
  head -c 102400 /dev/urandom >"$d/www/100k"
  head -c 1024 /dev/urandom >"$d/www/kbody"
  head -c 1024 /dev/urandom >"$d/www/mbody"
  head -c 1024 /dev/urandom >"$d/www/pass"
  chmod -R a+rX "$d/www"
  cat >"$d/nginx.conf" <<EOF
worker_processes 1;
pid $d/nginx.pid;
error_log $d/error.log warn;
events { worker_connections 8192; }
http {
  log_format bench '\$request_uri \$status';
  access_log $d/access.log bench;
  default_type application/octet-stream;
  sendfile on;
  keepalive_requests 100000000;
  keepalive_timeout 300s;
  open_file_cache max=16 inactive=1h;
  open_file_cache_valid 1h;
$(nginx_temp_paths "$d")
  server {
    listen 127.0.0.1:$PORT_ORIGIN backlog=4096;
    root $d/www;
    location = /1k   { add_header Cache-Control "$CC_HIT"; }
    location = /100k { add_header Cache-Control "$CC_HIT"; }
    location = /pass { add_header Cache-Control "no-store"; }
    location ~ "^/k/[0-9]{1,4}\$" { add_header Cache-Control "$CC_HIT"; try_files /kbody =404; }
    location ~ "^/m/[0-9]+\$"     { add_header Cache-Control "$CC_HIT"; try_files /mbody =404; }
    location / { return 404; }
  }
}
EOF
  taskset -c "$LOAD_CPU" "$NGINX" -p "$d" -c "$d/nginx.conf" -e "$d/error.log" -g 'daemon off;' \
    >"$d/stdout.log" 2>&1 &
  ORIGIN_PID=$!
  STARTED+=("$ORIGIN_PID")
  wait_port "$PORT_ORIGIN" "$ORIGIN_PID" 10 || { tail -n 20 "$d/error.log" "$d/stdout.log" >&2; die "origin nginx did not start"; }
  local sz
  sz=$(curl -s -o /dev/null -w '%{size_download}' "http://127.0.0.1:$PORT_ORIGIN/k/1")
  [[ $sz == 1024 ]] || die "origin self-test failed (/k/1 returned $sz bytes)"
  ORIGIN_LOG=$d/access.log
}

origin_count() { if [[ -f $ORIGIN_LOG ]]; then wc -l <"$ORIGIN_LOG"; else echo 0; fi; }

wait_port() { # port pid timeout_s
  local i
  for ((i = 0; i < $3 * 10; i++)); do
    kill -0 "$2" 2>/dev/null || return 1
    port_in_use "$1" && return 0
    sleep 0.1
  done
  return 1
}

# ---------------------------------------------------------------------------------------------
# wrk lua scripts
# ---------------------------------------------------------------------------------------------
cat >"$T/random_keys.lua" <<'EOF'
-- request a random /prefix/<n>, n in [0, N)
local reqs, n = {}, 0
function init(args)
  n = tonumber(args[1]) or 10000
  local prefix = args[2] or "/k/"
  for i = 0, n - 1 do reqs[i] = wrk.format("GET", prefix .. i) end
  math.randomseed(os.time())
end
function request() return reqs[math.random(0, n - 1)] end
EOF
cat >"$T/walk.lua" <<'EOF'
-- request /prefix/0 .. /prefix/<N-1> in order (then wrap), exit after N + margin responses
local n, prefix, target, i, got = 0, "/m/", 0, 0, 0
function init(args)
  n = tonumber(args[1]); prefix = args[2]; target = n + tonumber(args[3] or "0")
end
function request()
  local p = prefix .. (i % n)
  i = i + 1
  return wrk.format("GET", p)
end
function response(status, headers, body)
  got = got + 1
  if got >= target then
    io.write(string.format("walk: %d responses, last status %d\n", got, status))
    io.flush()
    os.exit(0)
  end
end
EOF

# walk N keys under prefix through the proxy on port; wrk is killed by its own script when done
walk() { # port prefix count timeout_s
  taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNECTIONS" -d"${4}s" -s "$T/walk.lua" \
    "http://127.0.0.1:$1" -- "$3" "$2" "$((2 * CONNECTIONS + $3 / 50))" >"$T/walk.out" 2>&1 || true
  grep -q '^walk:' "$T/walk.out" || warn "walk of $3 keys under $2 on :$1 did not finish in ${4}s: $(tr '\n' ' ' <"$T/walk.out")"
}

# ---------------------------------------------------------------------------------------------
# Measurements
# ---------------------------------------------------------------------------------------------
cpu_ticks() { # pids... -> utime+stime summed (clock ticks)
  local total=0 p line f
  for p in "$@"; do
    line=$(cat "/proc/$p/stat" 2>/dev/null) || continue
    line=${line##*) }
    read -r -a f <<<"$line"
    total=$((total + f[11] + f[12]))
  done
  echo "$total"
}
cpu_busy() { # cpu number -> "busy total" ticks of that CPU from /proc/stat
  awk -v c="cpu$1" '$1 == c {print $2 + $3 + $4 + $7 + $8 + $9, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9}' /proc/stat
}
rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }

to_ms() { # wrk latency "1.23ms" / "512.00us" / "1.02s" / "1.00m" -> ms
  awk -v v="$1" 'BEGIN {
    if (v ~ /us$/) { sub(/us$/, "", v); printf "%.2f", v / 1000 }
    else if (v ~ /ms$/) { sub(/ms$/, "", v); printf "%.2f", v }
    else if (v ~ /m$/) { sub(/m$/, "", v); printf "%.2f", v * 60000 }
    else if (v ~ /s$/) { sub(/s$/, "", v); printf "%.2f", v * 1000 }
    else print "?" }'
}

declare -A RPS P99 REQS CPU EFF ORIG FLAG MEM DISK OTHER
FAILED=()
SCENARIOS=(hit-1k hit-100k hit-10k-keys pass)
declare -A SC_DESC=(
  [hit-1k]="hits /1k"
  [hit-100k]="hits /100k"
  [hit-10k-keys]="hits 10k keys"
  [pass]="pass no-store"
)

# Headers of a GET (body discarded), and a cache-hit test per proxy.
get_headers() { curl -s -D - -o /dev/null --max-time 10 "$1"; }
is_hit() { # proxy headers
  case $1 in
    outpost) grep -i '^cache-status:' <<<"$2" | grep -qiE '(^|[;, ])hit([;, ]|$)' ;;
    nginx) grep -qiE '^x-cache: *HIT' <<<"$2" ;;
    varnish) grep -qiE '^x-varnish: *[0-9]+ +[0-9]+' <<<"$2" ;;
  esac
}

# Warm a URL (GET twice) and check the second response is a cache hit with the right size.
warm_check() { # proxy url expected_size
  local h sz i
  for i in 1 2 3; do
    h=$(get_headers "$2") || true
    sleep 0.05
  done
  sz=$(curl -s -o /dev/null -w '%{size_download}' --max-time 10 "$2" || echo 0)
  [[ $sz == "$3" ]] || { warn "$1: $2 returned $sz bytes, expected $3"; return 1; }
  if ! is_hit "$1" "$h"; then
    warn "$1: $2 is not served from cache after warming; response headers: $(tr -d '\r' <<<"$h" | tr '\n' '|')"
    return 1
  fi
  return 0
}

run_wrk() { # proxy scenario url [lua args...]
  local proxy=$1 sc=$2 url=$3; shift 3
  local out=$T/wrk-$proxy-$sc.txt lua=()
  if (($#)); then lua=(-s "$T/random_keys.lua" "$url" -- "$@"); else lua=("$url"); fi
  if [[ $WARMUP != 0 && $WARMUP != 0s ]]; then
    taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNECTIONS" -d"$WARMUP" "${lua[@]}" >"$T/wrk-$proxy-$sc.warmup.txt" 2>&1 || true
  fi
  local pids c0 c1 o0 o1 b0 b1
  mapfile -t pids < <(descendants "$PROXY_PID")
  o0=$(origin_count)
  b0=$(cpu_busy "$PROXY_CPU")
  c0=$(cpu_ticks "${pids[@]}")
  taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNECTIONS" -d"$DURATION" --latency "${lua[@]}" >"$out" 2>&1 ||
    warn "$proxy $sc: wrk exited non-zero (see $out)"
  c1=$(cpu_ticks "${pids[@]}")
  b1=$(cpu_busy "$PROXY_CPU")
  o1=$(origin_count)
  # Share of the proxy CPU used by anything but the proxy (other processes, softirq): noise.
  OTHER[$proxy,$sc]=$(awk -v b0="$b0" -v b1="$b1" -v p=$((c1 - c0)) 'BEGIN {
    split(b0, x, " "); split(b1, y, " "); t = y[2] - x[2]
    o = t > 0 ? 100 * (y[1] - x[1] - p) / t : -1; if (t <= 0) print "?"; else printf "%.0f%%", (o < 0 ? 0 : o) }')
  local rps p99 reqs
  rps=$(awk '/^Requests\/sec:/ {print $2}' "$out")
  p99=$(awk '$1 == "99%" {print $2}' "$out")
  reqs=$(awk '/requests in/ {print $1}' "$out")
  [[ -n $rps && -n $reqs ]] || { warn "$proxy $sc: could not parse wrk output ($out)"; rps=0 reqs=0 p99=?; }
  RPS[$proxy,$sc]=$(printf '%.0f' "$rps")
  P99[$proxy,$sc]=$(to_ms "$p99")
  REQS[$proxy,$sc]=$reqs
  CPU[$proxy,$sc]=$(awk -v t=$((c1 - c0)) -v hz="$CLK_TCK" 'BEGIN {printf "%.2f", t / hz}')
  EFF[$proxy,$sc]=$(awk -v r="$reqs" -v t=$((c1 - c0)) -v hz="$CLK_TCK" 'BEGIN {if (t > 0) printf "%.0f", r / (t / hz); else print 0}')
  ORIG[$proxy,$sc]=$((o1 - o0))
  if [[ ${OTHER[$proxy,$sc]%\%} =~ ^[0-9]+$ ]] && ((${OTHER[$proxy,$sc]%\%} > 20)); then
    warn "$proxy $sc: CPU $PROXY_CPU was ${OTHER[$proxy,$sc]} busy with other work during the run: numbers are noisy"
  fi
  if grep -q 'Non-2xx or 3xx' "$out"; then warn "$proxy $sc: $(grep 'Non-2xx or 3xx' "$out" | xargs)"; FLAG[$proxy,$sc]='!'; fi
  if grep -q 'Socket errors' "$out"; then warn "$proxy $sc: $(grep 'Socket errors' "$out" | xargs)"; FLAG[$proxy,$sc]='!'; fi
  if [[ $sc != pass ]] && (( o1 - o0 > 10 + reqs / 1000 )); then
    warn "$proxy $sc: origin received $((o1 - o0)) requests during the hit run ($reqs requests): not served from cache"
    FLAG[$proxy,$sc]='!'
  fi
  log "$proxy $sc: ${RPS[$proxy,$sc]} req/s, p99 ${P99[$proxy,$sc]} ms, cpu ${CPU[$proxy,$sc]} s, ${EFF[$proxy,$sc]} req/cpu-s, origin reqs $((o1 - o0)), other load on CPU $PROXY_CPU ${OTHER[$proxy,$sc]}"
}

bench_proxy() { # proxy port
  local proxy=$1 port=$2 base=http://127.0.0.1:$2 o0 o1 n
  # (a) /1k
  warm_check "$proxy" "$base/1k" 1024 || FLAG[$proxy,hit-1k]='*'
  run_wrk "$proxy" hit-1k "$base/1k"
  # (b) /100k
  warm_check "$proxy" "$base/100k" 102400 || FLAG[$proxy,hit-100k]='*'
  run_wrk "$proxy" hit-100k "$base/100k"
  # (c) 10,000 keys: walk all of them once, then check a sample
  o0=$(origin_count)
  walk "$port" /k/ "$KEYS" 60
  o1=$(origin_count)
  n=$(tail -n "+$((o0 + 1))" "$ORIGIN_LOG" | head -n "$((o1 - o0))" | awk '$1 ~ /^\/k\//' | sort -u | wc -l)
  ((n == KEYS)) || warn "$proxy: warming fetched $n distinct /k/ keys from the origin, expected $KEYS"
  for k in 0 4321 $((KEYS - 1)); do warm_check "$proxy" "$base/k/$k" 1024 || FLAG[$proxy,hit-10k-keys]='*'; done
  run_wrk "$proxy" hit-10k-keys "$base" "$KEYS" /k/
  # (d) pass-through
  o0=$(origin_count)
  curl -s -o /dev/null "$base/pass"; curl -s -o /dev/null "$base/pass"
  o1=$(origin_count)
  ((o1 - o0 == 2)) || warn "$proxy: /pass: origin saw $((o1 - o0)) of 2 requests (no-store response cached?)"
  run_wrk "$proxy" pass "$base/pass"
  # Memory per object: fill MEM_OBJECTS distinct /m/<n> objects
  sleep 1
  local r0 r1 objs
  r0=$(rss_kb "$MEM_PID")
  o0=$(origin_count)
  local t0=$SECONDS
  walk "$port" /m/ "$MEM_OBJECTS" 120
  o1=$(origin_count)
  sleep 2
  r1=$(rss_kb "$MEM_PID")
  objs=$(tail -n "+$((o0 + 1))" "$ORIGIN_LOG" | head -n "$((o1 - o0))" | awk '$1 ~ /^\/m\//' | sort -u | wc -l)
  log "$proxy: filled $objs objects in $((SECONDS - t0)) s, RSS $r0 kB -> $r1 kB (pid $MEM_PID)"
  ((objs >= MEM_OBJECTS * 99 / 100)) || warn "$proxy: only $objs of $MEM_OBJECTS /m/ objects reached the origin during the fill"
  warm_check "$proxy" "$base/m/0" 1024 || warn "$proxy: /m/0 not a hit after the fill (evicted?)"
  warm_check "$proxy" "$base/m/$((MEM_OBJECTS - 1))" 1024 || true
  if ((objs > 0)); then
    MEM[$proxy]=$(awk -v a="$r0" -v b="$r1" -v n="$objs" 'BEGIN {printf "%.0f", (b - a) * 1024 / n}')
  else
    MEM[$proxy]=?
  fi
}

# ---------------------------------------------------------------------------------------------
# Proxies
# ---------------------------------------------------------------------------------------------
start_nginx() {
  local d=$T/nginx
  mkdir -p "$d/cache" "$d/tmp"
  cat >"$d/nginx.conf" <<EOF
worker_processes 1;
pid $d/nginx.pid;
error_log $d/error.log warn;
events { worker_connections 8192; }
http {
  access_log off;
  sendfile on;
  keepalive_requests 100000000;
  keepalive_timeout 300s;
$(nginx_temp_paths "$d")
  proxy_cache_path $d/cache levels=1:2 keys_zone=bench:64m max_size=4g inactive=1h use_temp_path=off;
  upstream origin {
    server 127.0.0.1:$PORT_ORIGIN;
    keepalive 64;
    keepalive_requests 100000000;
  }
  server {
    listen 127.0.0.1:$PORT_NGINX backlog=4096;
    location / {
      proxy_pass http://origin;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_cache bench;
      proxy_cache_key \$scheme\$host\$request_uri;
      add_header X-Cache \$upstream_cache_status;
    }
  }
}
EOF
  taskset -c "$PROXY_CPU" "$NGINX" -p "$d" -c "$d/nginx.conf" -e "$d/error.log" -g 'daemon off;' \
    >"$d/stdout.log" 2>&1 &
  PROXY_PID=$!
  STARTED+=("$PROXY_PID")
  wait_port "$PORT_NGINX" "$PROXY_PID" 10 || { tail -n 20 "$d/error.log" "$d/stdout.log" >&2; return 1; }
  local i
  for ((i = 0; i < 50; i++)); do
    MEM_PID=$(pgrep -P "$PROXY_PID" -f 'nginx: worker process' | head -1 || true)
    [[ -n $MEM_PID ]] && break
    sleep 0.1
  done
  [[ -n $MEM_PID ]] || { echo "no nginx worker process" >&2; return 1; }
}

start_varnish() {
  local d=$T/varnish
  mkdir -p "$d/work"
  cat >"$d/default.vcl" <<EOF
vcl 4.1;
backend default {
  .host = "127.0.0.1";
  .port = "$PORT_ORIGIN";
}
EOF
  chmod 644 "$d/default.vcl"
  taskset -c "$PROXY_CPU" "$VARNISHD" -F -n "$d/work" -a "127.0.0.1:$PORT_VARNISH" -f "$d/default.vcl" \
    -s malloc,1G -p thread_pools=1 -T none >"$d/varnishd.log" 2>&1 &
  PROXY_PID=$!
  STARTED+=("$PROXY_PID")
  wait_port "$PORT_VARNISH" "$PROXY_PID" 30 || { tail -n 30 "$d/varnishd.log" >&2; return 1; }
  local i p
  MEM_PID=
  for ((i = 0; i < 50; i++)); do
    for p in $(pgrep -P "$PROXY_PID" || true); do
      [[ $(cat "/proc/$p/comm" 2>/dev/null) == cache-main ]] && MEM_PID=$p
    done
    [[ -n $MEM_PID ]] && break
    sleep 0.1
  done
  [[ -n $MEM_PID ]] || { echo "no varnish child (cache-main) process" >&2; return 1; }
}

outpost_cmd() { # config -> argv on stdout, one per line
  local cfg=$1 help
  if [[ -n ${OUTPOST_ARGS:-} ]]; then
    local a
    for a in $OUTPOST_ARGS; do echo "${a//\{config\}/$cfg}"; done
    return
  fi
  help=$("$OUTPOST_BIN" --help 2>&1 || true)
  if grep -qE '^\s+run(\s|$)' <<<"$help"; then printf '%s\n' run --config "$cfg"
  elif grep -qE '^\s+serve(\s|$)' <<<"$help"; then printf '%s\n' serve --config "$cfg"
  else printf '%s\n' --config "$cfg"
  fi
}

start_outpost() {
  local d=$T/outpost
  mkdir -p "$d/cache"
  cat >"$d/outpost.toml" <<EOF
[node]
name = "outpost"
threads = 1
shutdown_grace = "1s"

[listen]
http = ["127.0.0.1:$PORT_OUTPOST"]

[admin]
listen = "127.0.0.1:$PORT_OUTPOST_ADMIN"
token = "bench-token"

[metrics]
listen = "127.0.0.1:$PORT_OUTPOST_METRICS"

[cache]
dir = "$d/cache"
memory_size = "2GiB"
max_object_size = "1MiB"

[[origins]]
name = "origin"
url = "http://127.0.0.1:$PORT_ORIGIN"

[[rules]]
name = "default"
action = "cache"
EOF
  if "$OUTPOST_BIN" check --help >/dev/null 2>&1; then
    "$OUTPOST_BIN" check --config "$d/outpost.toml" >"$d/check.log" 2>&1 ||
      { cat "$d/check.log" >&2; echo "outpost check --config rejected the generated config" >&2; return 1; }
  fi
  local argv
  mapfile -t argv < <(outpost_cmd "$d/outpost.toml")
  log "outpost: $OUTPOST_BIN ${argv[*]}"
  taskset -c "$PROXY_CPU" "$OUTPOST_BIN" "${argv[@]}" >"$d/outpost.log" 2>&1 &
  PROXY_PID=$!
  STARTED+=("$PROXY_PID")
  if ! wait_port "$PORT_OUTPOST" "$PROXY_PID" 30; then
    if kill -0 "$PROXY_PID" 2>/dev/null; then echo "outpost is running but not listening on :$PORT_OUTPOST after 30 s" >&2
    else wait "$PROXY_PID" && echo "outpost exited with status 0" >&2 || echo "outpost exited with status $?" >&2; fi
    tail -n 30 "$d/outpost.log" >&2
    return 1
  fi
  MEM_PID=$PROXY_PID
}

# How busy is the machine before we start? (Other work on the CPUs makes every number noisy.)
b0=$(cpu_busy "$PROXY_CPU"); l0=$(cpu_busy "$LOAD_CPU"); sleep 1; b1=$(cpu_busy "$PROXY_CPU"); l1=$(cpu_busy "$LOAD_CPU")
for pair in "$PROXY_CPU:$b0:$b1" "$LOAD_CPU:$l0:$l1"; do
  IFS=: read -r c x y <<<"$pair"
  busy=$(awk -v x="$x" -v y="$y" 'BEGIN {split(x, a, " "); split(y, b, " "); t = b[2] - a[2]; printf "%.0f", (t > 0 ? 100 * (b[1] - a[1]) / t : 0)}')
  ((busy < 10)) || warn "CPU $c was ${busy}% busy before the benchmark started (other processes): expect noisy numbers"
done

for proxy in $ONLY; do
  [[ -n ${ORIGIN_PID:-} ]] || setup_origin
  case $proxy in
    nginx) port=$PORT_NGINX ;;
    varnish) port=$PORT_VARNISH ;;
    outpost) port=$PORT_OUTPOST ;;
  esac
  log "=== $proxy (CPU $PROXY_CPU), wrk + origin on CPU $LOAD_CPU, $CONNECTIONS connections, $DURATION per run"
  if ! "start_$proxy" 2> >(tee "$T/$proxy.start.err" >&2); then
    sleep 0.2
    warn "$proxy failed to start: $(grep -v '^\[[0-9:]*\] ' "$T/$proxy.start.err" | tail -n 8 | tr '\n' ' ')"
    FAILED+=("$proxy")
    [[ -n ${PROXY_PID:-} ]] && kill_tree "$PROXY_PID"
    PROXY_PID=
    continue
  fi
  if ! kill -0 "$PROXY_PID" 2>/dev/null; then
    warn "$proxy died"; FAILED+=("$proxy"); continue
  fi
  bench_proxy "$proxy" "$port"
  if ! kill -0 "$PROXY_PID" 2>/dev/null; then warn "$proxy exited during the benchmark"; FAILED+=("$proxy"); fi
  if [[ $proxy == nginx ]]; then
    local_du=$(du -sk "$T/nginx/cache" | awk '{print $1}')
    DISK[nginx]=$(awk -v k="$local_du" -v n="$((KEYS + MEM_OBJECTS + 2))" 'BEGIN {printf "%.0f", k * 1024 / n}')
  fi
  kill_tree "$PROXY_PID" 10
  PROXY_PID=
done

for proxy in "${FAILED[@]}"; do
  for sc in "${SCENARIOS[@]}"; do [[ -n ${RPS[$proxy,$sc]:-} ]] || RPS[$proxy,$sc]=FAIL; done
  [[ -n ${MEM[$proxy]:-} ]] || MEM[$proxy]=FAIL
done

# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------
val() { local v=${1:-}; [[ -n $v ]] && echo "$v" || echo "-"; }
ratio() { # outpost value, peer values... ; higher is better
  local o=$1; shift
  awk -v o="$o" -v peers="$*" 'BEGIN {
    n = split(peers, p, " "); best = 0
    for (i = 1; i <= n; i++) if (p[i] ~ /^[0-9.]+$/ && p[i] + 0 > best) best = p[i] + 0
    if (o !~ /^[0-9.]+$/ || best == 0) print "-"; else printf "%.2f", o / best }'
}
ratio_low() { # lower is better (memory): outpost / smallest peer
  local o=$1; shift
  awk -v o="$o" -v peers="$*" 'BEGIN {
    n = split(peers, p, " "); best = -1
    for (i = 1; i <= n; i++) if (p[i] ~ /^-?[0-9.]+$/ && p[i] + 0 > 0 && (best < 0 || p[i] + 0 < best)) best = p[i] + 0
    if (o !~ /^-?[0-9.]+$/ || best <= 0) print "-"; else printf "%.2f", o / best }'
}

fmt='%-16s | %13s | %11s | %13s | %11s | %9s | %11s | %15s | %17s\n'
{
  echo
  echo "Outpost load benchmark: 1 proxy worker on CPU $PROXY_CPU; wrk -t1 -c$CONNECTIONS -d$DURATION and origin on CPU $LOAD_CPU"
  echo "(req/s and p99 latency from wrk; ratio = outpost / best of nginx, varnish; cpu = req per proxy CPU-second)"
  echo
  printf "$fmt" scenario "outpost req/s" "nginx req/s" "varnish req/s" "outpost p99" "nginx p99" "varnish p99" "ratio req/s" "ratio req/cpu-s"
  printf '%s\n' "$(printf "$fmt" | sed 's/[^|]/-/g')"
  for sc in "${SCENARIOS[@]}"; do
    printf "$fmt" "${SC_DESC[$sc]}" \
      "$(val "${RPS[outpost,$sc]:-}")${FLAG[outpost,$sc]:-}" "$(val "${RPS[nginx,$sc]:-}")${FLAG[nginx,$sc]:-}" "$(val "${RPS[varnish,$sc]:-}")${FLAG[varnish,$sc]:-}" \
      "$(val "${P99[outpost,$sc]:+${P99[outpost,$sc]}ms}")" "$(val "${P99[nginx,$sc]:+${P99[nginx,$sc]}ms}")" "$(val "${P99[varnish,$sc]:+${P99[varnish,$sc]}ms}")" \
      "$(ratio "${RPS[outpost,$sc]:-}" "${RPS[nginx,$sc]:-}" "${RPS[varnish,$sc]:-}")" \
      "$(ratio "${EFF[outpost,$sc]:-}" "${EFF[nginx,$sc]:-}" "${EFF[varnish,$sc]:-}")"
  done
  printf "$fmt" "bytes/object" "$(val "${MEM[outpost]:-}")" "$(val "${MEM[nginx]:-}")" "$(val "${MEM[varnish]:-}")" "" "" "" \
    "$(ratio_low "${MEM[outpost]:-}" "${MEM[varnish]:-}")" ""
  echo
  echo "bytes/object: RSS growth of the proxy worker (outpost process, nginx worker, varnish cache-main)"
  echo "  while filling $MEM_OBJECTS distinct 1 KiB objects, divided by the objects fetched; ratio = outpost / varnish (lower is better;"
  echo "  varnish is the peer that also keeps bodies in memory)."
  [[ -n ${DISK[nginx]:-} ]] && echo "  nginx keeps bodies on disk (page cache, not RSS): its cache dir held ${DISK[nginx]} bytes/object; its RSS is the keys_zone."
  echo
  fmt2='%-16s | %17s | %17s | %17s | %12s | %12s | %12s | %16s\n'
  printf "$fmt2" scenario "outpost req/cpu-s" "nginx req/cpu-s" "varnish req/cpu-s" "outpost orig" "nginx orig" "varnish orig" "other load o/n/v"
  printf '%s\n' "$(printf "$fmt2" | sed 's/[^|]/-/g')"
  for sc in "${SCENARIOS[@]}"; do
    printf "$fmt2" "${SC_DESC[$sc]}" \
      "$(val "${EFF[outpost,$sc]:-}")${CPU[outpost,$sc]:+ (${CPU[outpost,$sc]}s)}" \
      "$(val "${EFF[nginx,$sc]:-}")${CPU[nginx,$sc]:+ (${CPU[nginx,$sc]}s)}" \
      "$(val "${EFF[varnish,$sc]:-}")${CPU[varnish,$sc]:+ (${CPU[varnish,$sc]}s)}" \
      "$(val "${ORIG[outpost,$sc]:-}")" "$(val "${ORIG[nginx,$sc]:-}")" "$(val "${ORIG[varnish,$sc]:-}")" \
      "$(val "${OTHER[outpost,$sc]:-}")/$(val "${OTHER[nginx,$sc]:-}")/$(val "${OTHER[varnish,$sc]:-}")"
  done
  echo "(req/cpu-s = requests / CPU seconds (utime+stime) of the proxy's process tree during the run, in parentheses;"
  echo " orig = requests the origin received during the measured run: ~0 for hit scenarios;"
  echo " other load = share of CPU $PROXY_CPU busy with anything but the proxy during the run (softirq, other processes): noise)"
  echo "flags: * = cache hit not confirmed before the run, ! = errors or origin traffic during the run (see warnings)"
  if ((${#WARNINGS[@]})); then
    echo
    echo "warnings:"
    printf '  - %s\n' "${WARNINGS[@]}"
  fi
  echo
  echo "raw wrk outputs: $T/wrk-<proxy>-<scenario>.txt (logs and configs beside them)"
} | tee "$T/report.txt"

((${#FAILED[@]} == 0)) || { echo "FAILED: ${FAILED[*]}" >&2; exit 2; }
