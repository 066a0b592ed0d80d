#!/bin/bash
# Instructions per authorized request, counted by callgrind: deterministic
# where wall-clock rates on a shared machine drift by ±15 %.
#
# Usage: scripts/callgrind_proxy.sh [BINARY] [SECONDS]
#   BINARY   the gateway to measure (default target/release/rolegate;
#            build it first, e.g. `cargo build --release`)
#   SECONDS  counted window (default 10), after a 3 s warm-up
#
# Setup: a static nginx upstream serving a 956-byte JSON profile; the
# gateway with one worker, an HS256 issuer and one route that requires a
# capability (the verified-token cache hit, the session check, identity
# headers, the access log); `wrk -t1 -c4` with one token. Prints the
# program's instructions over the window divided by the requests wrk
# counted. Needs nginx, valgrind and wrk. Loopback only; stops what it
# starts. Under valgrind, aws-lc's SHA-256 runs its AVX code, not the SHA
# extensions the CPU may have: a digest (the shared token cache's key, on
# a connection's first request) counts for more here than on the real CPU.
set -euo pipefail
. "$(dirname "$0")/callgrind_lib.sh"
BIN=$(realpath "${1:-target/release/rolegate}")
SECS=${2:-10}
for tool in nginx valgrind callgrind_control wrk; do
  command -v "$tool" >/dev/null || { echo "needs $tool" >&2; exit 2; }
done
DIR=$(mktemp -d /tmp/rolegate-callgrind.XXXXXX)
# nginx's worker runs as another user when started as root.
chmod 755 "$DIR"
UP_PORT=18480
GW_PORT=18481
head -c 32 /dev/urandom | base64 > "$DIR/hmac.secret"
cat > "$DIR/rg.yaml" <<EOF
listen: { addr: "127.0.0.1:$GW_PORT" }
identity:
  issuers:
    - { iss: load-hs, audiences: [a], algorithms: [HS256], dev: true, keys: { hmac_secret_file: "$DIR/hmac.secret" } }
upstreams:
  app: { url: "http://127.0.0.1:$UP_PORT" }
sessions: { store: embedded, state_dir: "$DIR/state" }
reload: { watch: false }
roles:
  agent: { grants: [customer.profile.view] }
routes:
  - { name: profile, match: { methods: [GET], path: "/api/customers/{id}" }, require: customer.profile.view }
EOF
TOKEN=$("$BIN" token -c "$DIR/rg.yaml" --sub u1 --roles agent --ttl 1h 2>/dev/null | tail -1)
NG=
VG=
cleanup() {
  [ -n "$VG" ] && kill "$VG" 2>/dev/null && wait "$VG" 2>/dev/null
  [ -n "$NG" ] && kill "$NG" 2>/dev/null && wait "$NG" 2>/dev/null
  rm -rf "$DIR"
}
trap cleanup EXIT
start_upstream "$UP_PORT"
TOKIO_WORKER_THREADS=1 valgrind --tool=callgrind --callgrind-out-file="$DIR/cg.out" \
  "$BIN" serve -c "$DIR/rg.yaml" > "$DIR/gateway.log" 2>&1 &
VG=$!
for _ in $(seq 1 200); do
  kill -0 "$VG" 2>/dev/null || { echo "the gateway exited:" >&2; tail -3 "$DIR/gateway.log" >&2; exit 1; }
  curl -s -o /dev/null "http://127.0.0.1:$GW_PORT/" && break
  sleep 0.3
done
URL="http://127.0.0.1:$GW_PORT/api/customers/1"
count_window "$URL" "Authorization: Bearer $TOKEN" || { tail -3 "$DIR/gateway.log" >&2; exit 1; }
echo "binary: $BIN"
echo "requests: $REQUESTS (non-2xx: 0)  instructions: $IR  per request: $((IR / REQUESTS))"
if [ "${KEEP_PROFILE:-0}" = 1 ]; then
  cp "$DIR/cg.out.1" ./callgrind.proxy.out
  echo "profile: ./callgrind.proxy.out (callgrind_annotate --inclusive=yes)"
fi
