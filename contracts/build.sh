#!/usr/bin/env bash
# Rebuild (or, with --check, verify) contracts/VendboxUSDC.json and VendboxMulticall.json from their .sol files.
# Runnable from anywhere; needs node and npm.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
npm install --prefix contracts --no-audit --no-fund --silent
exec node contracts/build.mjs "$@"
