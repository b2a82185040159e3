#!/usr/bin/env bash
# Coordinator: the Flower 1.42 SuperLink behind its public proxy.
#
#   deploy/superlink.sh CERT_DIR STATE_DIR [extra flower-superlink flags]
#
# Starts three processes and stops all of them when one ends (or on SIGTERM / Ctrl-C):
#   1. flower-superlink on 127.0.0.1:NASOFL_SUPERLINK_PORT (default 9000) ONLY, with TLS, SuperNode authentication,
#      its state per NASOFL_SUPERLINK_STATE (below), --isolation process and the SuperExec secret
#      (STATE_DIR/superexec.secret, 256 random bits, made on first start, 0600). Its Fleet, Control and Runtime APIs
#      share that port; the Control API (flwr run / stop / supernode register ...) is therefore reachable from this
#      host only: point the coordinator's flwr CLI at 127.0.0.1:9000 (SSH port forwarding from elsewhere).
#   2. flower-superexec with the same secret: it runs the ServerApp. Without the secret the SuperLink's Runtime
#      API refuses to hand out tasks (Flower ignores the secret in the default subprocess isolation, hence
#      --isolation process).
#   3. nginx (Debian package) on NASOFL_PUBLIC_HOST:NASOFL_PUBLIC_PORT (default 0.0.0.0:8000) with the same TLS
#      certificate, forwarding only /health and the Fleet API (/v1/fleet/<name>) to the SuperLink; everything
#      else gets 404. Its configuration is deploy/nginx/superlink-proxy.conf.template, rendered into
#      STATE_DIR/proxy/nginx.conf.
# NASOFL_SUPERLINK_STATE: "memory" (default) keeps the SuperLink's state in its process; a restart forgets the
# registered node keys (register them again: deploy/README.md) and the run history, not the study (its checkpoints
# are in out-dir; resume=true). "sqlite" keeps them in STATE_DIR/state.db, together with every model array in
# transit: under load Flower 1.42 then fails requests with "database is locked" (its 5 s lock timeout) and a
# large-model study can end FAILED (deploy/README.md, "Round time").
# The ServerApp runs in this Python environment: runtime dependency installation is disabled (the study needs the
# installed nasofl + torch, not a per-run venv). Hospitals connect to the public port; ca.crt is not a credential.
set -euo pipefail

usage() { echo "usage: $0 CERT_DIR STATE_DIR [extra flower-superlink flags]" >&2; exit 2; }
[ $# -ge 2 ] || usage
certs=$(cd "$1" && pwd); state=$2; shift 2
public_host=${NASOFL_PUBLIC_HOST:-0.0.0.0}
public_port=${NASOFL_PUBLIC_PORT:-8000}
internal_port=${NASOFL_SUPERLINK_PORT:-9000}
here=$(cd "$(dirname "$0")" && pwd)
for f in ca.crt server.pem server.key; do
  [ -f "$certs/$f" ] || { echo "error: $certs/$f not found; make the certificates with deploy/certs.sh $certs PUBLIC_NAME" >&2; exit 1; }
done
command -v flower-superlink >/dev/null || { echo "error: flower-superlink not on PATH; activate the nasofl environment (pip install nasofl)" >&2; exit 1; }
nginx=$(command -v nginx || echo /usr/sbin/nginx)
[ -x "$nginx" ] || { echo "error: nginx not found; install it (Debian: apt-get install nginx)" >&2; exit 1; }
[ "$public_port" != "$internal_port" ] || { echo "error: NASOFL_PUBLIC_PORT and NASOFL_SUPERLINK_PORT must differ" >&2; exit 2; }
mkdir -p "$state"
state=$(cd "$state" && pwd)
case "${NASOFL_SUPERLINK_STATE:-memory}" in
  memory) database=":flwr-in-memory:"; state_text="in memory: node registrations are lost on restart" ;;
  sqlite) database="$state/state.db"; state_text="$database" ;;
  *) echo "error: NASOFL_SUPERLINK_STATE=${NASOFL_SUPERLINK_STATE} is not one of: memory, sqlite (deploy/README.md)" >&2; exit 2 ;;
esac

secret="$state/superexec.secret"
if [ ! -s "$secret" ]; then
  (umask 077 && openssl rand -hex 32 > "$secret")
fi
[ "$(stat -c %a "$secret")" = 600 ] || { echo "error: $secret must be mode 600 (chmod 600 $secret)" >&2; exit 1; }

run="$state/proxy"
mkdir -p "$run"
sed -e "s|@RUN_DIR@|$run|g" -e "s|@CERT_DIR@|$certs|g" -e "s|@PUBLIC_HOST@|$public_host|g" \
    -e "s|@PUBLIC_PORT@|$public_port|g" -e "s|@INTERNAL_PORT@|$internal_port|g" \
    "$here/nginx/superlink-proxy.conf.template" > "$run/nginx.conf"
"$nginx" -q -t -p "$run" -e stderr -c "$run/nginx.conf"

export FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1 FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1
pids=()
stop_all() { trap - EXIT; kill "${pids[@]}" 2>/dev/null || true; wait || true; }
trap stop_all EXIT
trap 'exit 143' TERM
trap 'exit 130' INT

echo "starting SuperLink on 127.0.0.1:$internal_port (state $state_text), public proxy on $public_host:$public_port"
flower-superlink \
  --ssl-ca-certfile "$certs/ca.crt" --ssl-certfile "$certs/server.pem" --ssl-keyfile "$certs/server.key" \
  --enable-supernode-auth \
  --database "$database" \
  --disable-runtime-dependency-installation \
  --isolation process --superexec-auth-secret-file "$secret" \
  --host 127.0.0.1 --port "$internal_port" \
  "$@" &
superlink_pid=$!
pids+=("$superlink_pid")
flower-superexec --root-certificates "$certs/ca.crt" --runtime-api-address "127.0.0.1:$internal_port" \
  --superexec-auth-secret-file "$secret" --parent-pid "$superlink_pid" &
pids+=("$!")
"$nginx" -p "$run" -e stderr -c "$run/nginx.conf" -g 'daemon off;' &
pids+=("$!")
wait -n
status=$?
echo "a coordinator process ended (exit $status): stopping the others" >&2
exit "$status"
