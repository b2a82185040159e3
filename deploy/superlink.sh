#!/usr/bin/env bash
# Coordinator: start the Flower 1.42 SuperLink with TLS, SuperNode authentication and a persistent state DB.
#
#   deploy/superlink.sh CERT_DIR STATE_DIR [extra flower-superlink flags]
#
# CERT_DIR: from deploy/certs.sh (ca.crt, server.pem, server.key). STATE_DIR: runs, logs and registered node keys
# survive a restart (SQLite state.db). Listens on 0.0.0.0:8000 (NASOFL_SUPERLINK_HOST / NASOFL_SUPERLINK_PORT);
# Fleet, Control and Runtime APIs share that one port in 1.42. The ServerApp runs in this Python environment:
# runtime dependency installation is disabled (the study needs the installed nasofl + torch, not a per-run venv).
set -euo pipefail

usage() { echo "usage: $0 CERT_DIR STATE_DIR [extra flower-superlink flags]" >&2; exit 2; }
[ $# -ge 2 ] || usage
certs=$1; state=$2; shift 2
host=${NASOFL_SUPERLINK_HOST:-0.0.0.0}
port=${NASOFL_SUPERLINK_PORT:-8000}
for f in ca.crt server.pem server.key; do
  [ -f "$certs/$f" ] || { echo "error: $certs/$f not found; make the certificates with deploy/certs.sh $certs PUBLIC_NAME" >&2; exit 1; }
done
command -v flower-superlink >/dev/null || { echo "error: flower-superlink not on PATH; activate the nasofl environment (pip install nasofl)" >&2; exit 1; }
mkdir -p "$state"

export FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1 FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1
echo "starting SuperLink on $host:$port (state $state/state.db)"
exec flower-superlink \
  --ssl-ca-certfile "$certs/ca.crt" --ssl-certfile "$certs/server.pem" --ssl-keyfile "$certs/server.key" \
  --enable-supernode-auth \
  --database "$state/state.db" \
  --disable-runtime-dependency-installation \
  --host "$host" --port "$port" \
  "$@"
