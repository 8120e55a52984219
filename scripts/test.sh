#!/usr/bin/env bash
# vendbox's whole test run: setup, formatting, clippy with warnings denied, and every test
# (both stores) under cargo-nextest. This is the README's test command and what CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# A failing test shows its message, not a backtrace that pushes the message out of the log tail.
export RUST_BACKTRACE=0
profile=default
[ -n "${CI:-}" ] && profile=ci
cargo nextest run --workspace --locked --profile "$profile"
