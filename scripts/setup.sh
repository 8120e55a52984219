#!/usr/bin/env bash
# Installs what vendbox's tests need on a Debian machine with Rust, Python and PostgreSQL, and
# makes sure the local PostgreSQL answers. Safe to run again: it only installs what is missing.
set -euo pipefail

cd "$(dirname "$0")/.."

say() { printf 'setup: %s\n' "$*"; }

if ! command -v cargo-nextest >/dev/null 2>&1; then
  say "installing cargo-nextest"
  cargo install --locked cargo-nextest
fi
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy rustfmt

# The OpenAPI 3.1 reference validator used by the API tests, and the schema validator the seed
# tests check vendbox's answers with (crates/vendbox/tests/seeds/validate.py).
if ! python3 -c 'import openapi_spec_validator, openapi_schema_validator' >/dev/null 2>&1; then
  say "installing openapi-spec-validator and openapi-schema-validator"
  python3 -m pip install --quiet 'openapi-spec-validator==0.9.0' 'openapi-schema-validator==0.9.0'
fi

# The ecosystem's own x402 clients that the payment tests pay with, and anvil (the local chain):
# Python x402 2.25.0, and @x402/fetch 2.27.0, x402-fetch 1.2.0 and anvil 1.7.1 from npm.
# The official MPP clients the MPP tests pay with: pympp[evm] 0.16.0 (in requirements.txt) and
# mppx 0.11.0 from npm, in a tree of its own (tests/clients/mpp): its optional peers conflict
# with the x402 clients'.
# The stock E2B Python SDK, e2b 2.63.0 (requirements.txt), that tests/e2b.rs drives, and the
# official MCP Python SDK, mcp 2.3.0, that tests/mcp.rs drives.
if ! python3 -c 'import x402, httpx, mpp.methods.evm.client, e2b, mcp' >/dev/null 2>&1; then
  say "installing the x402, MPP, E2B and MCP Python clients"
  python3 -m pip install --quiet -r tests/clients/requirements.txt
fi
if [ ! -x tests/clients/node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil ] \
  || [ ! -d tests/clients/node_modules/@x402/fetch ] || [ ! -d tests/clients/node_modules/x402-fetch ]; then
  if ! command -v npm >/dev/null 2>&1; then
    say "installing Node.js and npm"
    apt-get update -qq && apt-get install -y -qq nodejs npm >/dev/null
  fi
  say "installing the x402 JavaScript clients and anvil"
  npm ci --prefix tests/clients --no-audit --no-fund --silent
fi
if [ ! -d tests/clients/mpp/node_modules/mppx ]; then
  say "installing the MPP JavaScript client"
  npm ci --prefix tests/clients/mpp --no-audit --no-fund --silent
fi
# The stock E2B JavaScript SDK, e2b 2.51.0, that tests/e2b.rs drives, in a tree of its own.
if [ ! -d tests/clients/e2b/node_modules/e2b ]; then
  say "installing the E2B JavaScript SDK"
  npm ci --prefix tests/clients/e2b --no-audit --no-fund --silent
fi

# Debian packages the tests call: bubblewrap (the local box backend's sandbox), OpenSSH's client
# tools (ssh, scp, sftp drive the SSH gateway) and socat (the SFTP test's transport).
missing=()
command -v bwrap >/dev/null 2>&1 || missing+=(bubblewrap)
for tool in ssh scp sftp ssh-keygen; do
  command -v "$tool" >/dev/null 2>&1 || { missing+=(openssh-client); break; }
done
command -v socat >/dev/null 2>&1 || missing+=(socat)
# Images and disks of boxes: mmdebstrap builds debian-12, umoci and skopeo import OCI and Docker
# archives, e2fsprogs makes each box's ext4 disk, dpkg-deb builds the test's package.
command -v mmdebstrap >/dev/null 2>&1 || missing+=(mmdebstrap)
command -v umoci >/dev/null 2>&1 || missing+=(umoci)
command -v skopeo >/dev/null 2>&1 || missing+=(skopeo)
# SecretVM's image pulls: a local OCI registry (Debian's docker-registry) and a static busybox
# for the test's image.
command -v docker-registry >/dev/null 2>&1 || missing+=(docker-registry)
[ -x /bin/busybox ] || missing+=(busybox-static)
command -v mkfs.ext4 >/dev/null 2>&1 || missing+=(e2fsprogs)
command -v lxcfs >/dev/null 2>&1 || missing+=(lxcfs)
# Box egress: nftables (the policy), iproute2 (namespaces, links, tc); the egress tests' own
# DNS server (dnsmasq) and client (curl).
command -v nft >/dev/null 2>&1 || missing+=(nftables)
command -v tc >/dev/null 2>&1 || missing+=(iproute2)
command -v dnsmasq >/dev/null 2>&1 || missing+=(dnsmasq-base)
command -v curl >/dev/null 2>&1 || missing+=(curl)
if [ "${#missing[@]}" -gt 0 ]; then
  say "installing ${missing[*]}"
  (apt-get install -y -qq "${missing[@]}" >/dev/null 2>&1) \
    || (apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null)
fi

# lxcfs shows each box its own limits in /proc (free, /proc/meminfo); Debian's service starts it
# where systemd runs, and here it is started detached where it does not. A mount whose lxcfs
# has died answers nothing ("Transport endpoint is not connected"): it is lifted and lxcfs
# started again. Like Debian's service, it is kept out of the OOM killer's reach; what it says
# goes to /run/lxcfs.log.
lxcfs_answers() { head -c1 /var/lib/lxcfs/proc/meminfo >/dev/null 2>&1; }
if command -v lxcfs >/dev/null 2>&1 && ! lxcfs_answers; then
  if grep -q ' /var/lib/lxcfs ' /proc/self/mountinfo; then
    say "lxcfs's mount does not answer; lifting it"
    umount -l /var/lib/lxcfs || true
  fi
  say "starting lxcfs"
  mkdir -p /var/lib/lxcfs
  (setsid lxcfs --pidfile=/run/lxcfs.pid /var/lib/lxcfs >>/run/lxcfs.log 2>&1 &)
  for _ in $(seq 50); do lxcfs_answers && break; sleep 0.1; done
  if lxcfs_answers; then
    echo -1000 > "/proc/$(cat /run/lxcfs.pid)/oom_score_adj" || true
  else
    say "lxcfs did not start; see /run/lxcfs.log"
  fi
fi

# PostgreSQL at 127.0.0.1:5432 with trust auth and a database `test` (the store suite's second
# backend). Start the local cluster if it is installed but down.
if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
  if command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
    say "starting PostgreSQL"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
  fi
fi
if pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
  psql -h 127.0.0.1 -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname = 'test'" | grep -q 1 \
    || psql -h 127.0.0.1 -U postgres -c 'CREATE DATABASE test' >/dev/null
else
  say "PostgreSQL does not answer at 127.0.0.1:5432; its tests will be skipped (or fail under CI)"
fi
say "ready"
