#!/usr/bin/env bash
# Coordinator: a self-signed CA and the SuperLink's TLS server certificate.
#
#   deploy/certs.sh OUT_DIR PUBLIC_NAME [PUBLIC_NAME ...]
#
# PUBLIC_NAME: the DNS name(s) or IP address(es) hospitals use to reach the SuperLink (fl.example.org,
# 203.0.113.7, superlink for Docker). IP:127.0.0.1 and DNS:localhost are always added: Flower 1.42's SuperExec
# connects to the SuperLink on 127.0.0.1 (flwr/supercore/address.py rewrites 0.0.0.0), so without them every
# run fails the TLS handshake.
#
# Writes OUT_DIR/ca.crt (send to every hospital), OUT_DIR/ca.key (keep secret, offline), OUT_DIR/server.pem,
# OUT_DIR/server.key (SuperLink only). Refuses to overwrite existing files.
set -euo pipefail

usage() { echo "usage: $0 OUT_DIR PUBLIC_NAME [PUBLIC_NAME ...]   (e.g. $0 certs fl.example.org)" >&2; exit 2; }
[ $# -ge 2 ] || usage
out=$1; shift
command -v openssl >/dev/null || { echo "error: openssl not found; install it (apt-get install openssl)" >&2; exit 1; }

mkdir -p "$out"
for f in ca.crt ca.key server.pem server.key; do
  if [ -e "$out/$f" ]; then
    echo "error: $out/$f already exists; refusing to overwrite certificates (move the folder away to make new ones)" >&2
    exit 1
  fi
done

san="IP:127.0.0.1,DNS:localhost"
for name in "$@"; do
  if [[ "$name" =~ ^[0-9]{1,3}(\.[0-9]{1,3}){3}$ || "$name" == *:* ]]; then
    entry="IP:$name"
  elif [[ "$name" =~ ^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$ ]]; then
    entry="DNS:$name"
  else
    echo "error: public name '$name' is neither a DNS name nor an IP address" >&2; exit 2
  fi
  [[ ",$san," == *",$entry,"* ]] || san="$san,$entry"
done
cn=$1

tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
umask 077
openssl genrsa -out "$tmp/ca.key" 4096 2>/dev/null
openssl req -x509 -new -key "$tmp/ca.key" -sha256 -days 3650 -subj "/CN=nasofl federation CA" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
  -out "$tmp/ca.crt"
openssl genrsa -out "$tmp/server.key" 4096 2>/dev/null
openssl req -new -key "$tmp/server.key" -subj "/CN=$cn" -out "$tmp/server.csr"
printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=%s\n' \
  "$san" > "$tmp/server.ext"
openssl x509 -req -in "$tmp/server.csr" -CA "$tmp/ca.crt" -CAkey "$tmp/ca.key" -CAcreateserial \
  -days 825 -sha256 -extfile "$tmp/server.ext" -out "$tmp/server.pem" 2>/dev/null
openssl verify -CAfile "$tmp/ca.crt" "$tmp/server.pem" >/dev/null

cp "$tmp/ca.key" "$tmp/server.key" "$out/"
umask 022
cp "$tmp/ca.crt" "$tmp/server.pem" "$out/"
chmod 600 "$out/ca.key" "$out/server.key"
chmod 644 "$out/ca.crt" "$out/server.pem"

echo "certificates written to $out"
echo "  ca.crt      -> send to every hospital (nasofl-site join --ca) and use as root-certificates in flwr's config.toml"
echo "  ca.key      -> keep offline; only needed to issue a new server certificate"
echo "  server.pem, server.key -> SuperLink only (deploy/superlink.sh)"
echo "  server SANs: $san"
