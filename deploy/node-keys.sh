#!/usr/bin/env bash
# Hospital: the SuperNode's authentication key pair (ECDSA P-384, the curve Flower 1.42 accepts).
#
#   deploy/node-keys.sh KEY_DIR SITE_NAME
#
# Writes KEY_DIR/SITE_NAME (private key: stays on this machine, passed to flower-supernode
# --auth-supernode-private-key) and KEY_DIR/SITE_NAME.pub (public key: send it to the coordinator).
# Prints the `flwr supernode register` line the coordinator runs. Refuses to overwrite an existing key.
set -euo pipefail

usage() { echo "usage: $0 KEY_DIR SITE_NAME   (e.g. $0 keys hospital-a)" >&2; exit 2; }
[ $# -eq 2 ] || usage
dir=$1; site=$2
[[ "$site" =~ ^[A-Za-z0-9][A-Za-z0-9._-]*$ ]] || { echo "error: SITE_NAME '$site' must be letters, digits, . _ - only" >&2; exit 2; }
command -v ssh-keygen >/dev/null || { echo "error: ssh-keygen not found; install openssh-client" >&2; exit 1; }

key="$dir/$site"
for f in "$key" "$key.pub"; do
  if [ -e "$f" ]; then
    echo "error: $f already exists; refusing to overwrite a node key (a new key must be registered again)" >&2
    exit 1
  fi
done
mkdir -p "$dir"
chmod 700 "$dir" 2>/dev/null || true
ssh-keygen -q -t ecdsa -b 384 -N "" -C "nasofl-$site" -f "$key"
chmod 600 "$key"

echo "node key pair written:"
echo "  private: $key      (stays here; flower-supernode --auth-supernode-private-key / nasofl-site join --key)"
echo "  public:  $key.pub  (send this file to the coordinator)"
echo
echo "The coordinator registers it with (CONNECTION = their [superlink.<name>] entry in flwr's config.toml):"
echo "  flwr supernode register $site.pub CONNECTION --name $site"
