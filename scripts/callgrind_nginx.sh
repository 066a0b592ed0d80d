#!/bin/bash
# Instructions per request of nginx as a plain keep-alive reverse proxy,
# counted by callgrind: the reference for scripts/callgrind_proxy.sh (same
# upstream, same load), so the two counts compare.
#
# Usage: scripts/callgrind_nginx.sh [SECONDS]
#   SECONDS  counted window (default 10), after a 3 s warm-up
#
# Setup: the static nginx upstream of callgrind_proxy.sh (a 956-byte JSON
# profile); nginx proxying it as load_proxy's `nginx` scenario does
# (upstream keep-alive, HTTP/1.1, `combined` access log buffered 64k /
# 1s), one worker, run with `master_process off` so that valgrind follows
# the process that serves; `wrk -t1 -c4` with an Authorization header of
# the same shape. Prints the proxy's instructions over the window divided
# by the requests wrk counted. Needs nginx, valgrind and wrk. Loopback
# only; stops what it starts.
set -euo pipefail
. "$(dirname "$0")/callgrind_lib.sh"
SECS=${1:-10}
for tool in nginx valgrind callgrind_control wrk curl; do
  command -v "$tool" >/dev/null || { echo "needs $tool" >&2; exit 2; }
done
DIR=$(mktemp -d /tmp/nginx-callgrind.XXXXXX)
# nginx's workers run as another user when started as root.
chmod 755 "$DIR"
UP_PORT=18482
PX_PORT=18483
mkdir -p "$DIR/px"
cat > "$DIR/px.conf" <<EOC
worker_processes 1;
daemon off;
master_process off;
pid $DIR/px/nginx.pid;
error_log $DIR/px/error.log warn;
events { worker_connections 4096; }
http {
  access_log $DIR/px/access.log combined buffer=64k flush=1s;
  $(temp_paths "$DIR/px")
  keepalive_timeout 60s; keepalive_requests 1000000;
  upstream app { server 127.0.0.1:$UP_PORT; keepalive 64; }
  server {
    listen 127.0.0.1:$PX_PORT;
    location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
EOC
NG=
VG=
cleanup() {
  [ -n "$VG" ] && kill "$VG" 2>/dev/null && wait "$VG" 2>/dev/null
  [ -n "$NG" ] && kill "$NG" 2>/dev/null && wait "$NG" 2>/dev/null
  rm -rf "$DIR"
}
trap cleanup EXIT
start_upstream "$UP_PORT"
valgrind --tool=callgrind --callgrind-out-file="$DIR/cg.out" \
  nginx -c "$DIR/px.conf" -p "$DIR/px" -e "$DIR/px/error.log" > "$DIR/valgrind.log" 2>&1 &
VG=$!
URL="http://127.0.0.1:$PX_PORT/api/customers/1"
for _ in $(seq 1 200); do
  kill -0 "$VG" 2>/dev/null || { echo "nginx exited:" >&2; tail -3 "$DIR/px/error.log" >&2; exit 1; }
  curl -s -o /dev/null "$URL" && break
  sleep 0.3
done
# A token-shaped header, as the gateway's load carries (nginx ignores it).
AUTH="Authorization: Bearer $(head -c 180 /dev/urandom | base64 -w0 | tr '+/' '-_')"
count_window "$URL" "$AUTH"
echo "nginx $(nginx -v 2>&1 | sed 's/.*nginx\///')"
echo "requests: $REQUESTS (non-2xx: 0)  instructions: $IR  per request: $((IR / REQUESTS))"
