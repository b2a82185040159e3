#!/usr/bin/env bash
# Hospital: validate the site folder, then run this site's Flower 1.42 SuperNode (TLS + node key).
#
#   deploy/supernode.sh SITE_DIR SUPERLINK_HOST:PORT CA_FILE PRIVATE_KEY APPROVED_APPS [CACHE_DIR] [extra join flags]
#
# A thin wrapper over `nasofl-site join` (client/node_cmd.py), which refuses to join when validation finds
# blocking problems and then execs Flower's SuperNode (client.supernode_launch: flower-supernode with a 0.5 s idle
# poll, NASOFL_SUPERNODE_IDLE_POLL_S) with --root-certificates, --auth-supernode-private-key and
# --node-config 'data-path="..." cache-path="..." eval-only=false', with FLWR_TELEMETRY_ENABLED=0,
# FLWR_DISABLE_UPDATE_CHECK=1 and FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1. APPROVED_APPS: the site's
# approved-apps file (`nasofl-site approve APP --approved-apps FILE`): only those app FABs run here.
# Extra flags: --eval-only, --site-name NAME, --runtime-port 9094, --max-retries N, --isolation process, --dry-run.
set -euo pipefail

usage() { echo "usage: $0 SITE_DIR SUPERLINK_HOST:PORT CA_FILE PRIVATE_KEY APPROVED_APPS [CACHE_DIR] [--eval-only ...]" >&2; exit 2; }
[ $# -ge 5 ] || usage
site=$1; superlink=$2; ca=$3; key=$4; approved=$5; shift 5
cache=()
if [ $# -ge 1 ] && [[ "$1" != --* ]]; then cache=(--cache "$1"); shift; fi
command -v nasofl-site >/dev/null || { echo "error: nasofl-site not on PATH; activate the nasofl environment" >&2; exit 1; }

export FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1 FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1
nasofl-site join --check --superlink "$superlink" --ca "$ca" \
  || echo "warning: the SuperLink is not reachable yet; the SuperNode keeps retrying" >&2
exec nasofl-site join "$site" --superlink "$superlink" --ca "$ca" --key "$key" --approved-apps "$approved" "${cache[@]}" "$@"
