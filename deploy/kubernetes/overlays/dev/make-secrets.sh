#!/usr/bin/env bash
# Makes the dev overlay's secret files in secrets/ (git ignores them): a random Redis password and the queue URL
# with it, a self-signed TLS certificate for ingest, and the key files. Files that exist are kept, so running it
# again changes nothing; delete a file to make it anew.
#
# The key files start with no key (every gRPC call is refused, SMTP AUTH knows no user). With `tern` on PATH
# (or TERN=/path/to/tern), it also makes one Send API key and one admin key named "dev" and prints them once.
#
# Usage: make-secrets.sh [DIR]    (default: the secrets/ folder beside this script)
set -euo pipefail

dir=${1:-"$(cd "$(dirname "$0")" && pwd)/secrets"}
namespace="tern-dev"
tern=${TERN:-$(command -v tern || true)}

command -v openssl >/dev/null || { echo "make-secrets.sh: needs openssl (Debian: apt-get install openssl)" >&2; exit 1; }
umask 077
mkdir -p "$dir"

if [ ! -f "$dir/queue.env" ]; then
  password=$(openssl rand -hex 24)
  printf 'url=redis://:%s@tern-redis:6379\npassword=%s\n' "$password" "$password" >"$dir/queue.env"
  echo "made $dir/queue.env (Redis password and queue URL)"
fi

if [ ! -f "$dir/tls.crt" ] || [ ! -f "$dir/tls.key" ]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 365 \
    -subj "/CN=tern-ingest.$namespace.svc" \
    -addext "subjectAltName=DNS:tern-ingest,DNS:tern-ingest.$namespace,DNS:tern-ingest.$namespace.svc,DNS:localhost,IP:127.0.0.1" \
    -keyout "$dir/tls.key" -out "$dir/tls.crt" 2>/dev/null
  echo "made $dir/tls.crt and tls.key (self-signed, 365 days)"
fi

# Appends a key named "dev" made by `tern apikey` to a keys file, and prints the key.
make_key() {
  local file=$1 what=$2 output
  if [ -n "$tern" ] && output=$("$tern" apikey dev); then
    echo "$output" | sed -n 2p >>"$file"
    echo "$what key (shown once): $(echo "$output" | sed -n 1p)"
  fi
}

if [ ! -f "$dir/api_keys" ]; then
  echo "# gRPC Send API keys: lines from 'tern apikey NAME'" >"$dir/api_keys"
  make_key "$dir/api_keys" "Send API"
  echo "made $dir/api_keys"
fi
if [ ! -f "$dir/admin_keys" ]; then
  echo "# admin keys for ternctl: lines from 'tern apikey NAME'" >"$dir/admin_keys"
  make_key "$dir/admin_keys" "admin"
  echo "made $dir/admin_keys"
fi
if [ ! -f "$dir/users" ]; then
  echo "# SMTP users: user:<hash from 'tern passwd'>" >"$dir/users"
  echo "made $dir/users"
fi
