#!/usr/bin/env bash
# Every test Herald has, as .ci/run runs them: the Rust workspace (cargo test), then the
# JavaScript client library's unit, type, end-to-end and browser tests against real
# nodes. Needs what README.md's Tests section lists (.ci/run installs it).
set -euo pipefail
cd "$(dirname "$0")"

log() { printf '\n== %s\n' "$*"; }

log "Rust: cargo test --workspace"
cargo test --workspace

log "JavaScript client (clients/js): npm ci, unit tests, typecheck"
# The end-to-end and browser tests run the node binary built here.
cargo build -p herald-server
export HERALD_SERVER_BIN="$PWD/target/debug/herald-server"
cd clients/js
# Exactly what the committed lock file names (devDependencies only: the library has none).
npm ci --no-audit --no-fund
npm test
npm run typecheck

log "JavaScript client: end to end against real nodes (SQLite, PostgreSQL + Redis, nginx)"
npm run test:e2e

log "JavaScript client: the live page in headless Chromium"
npm run test:browser
