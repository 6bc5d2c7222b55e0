#!/bin/bash
# What mutual TLS costs (bench/README.md): raft_load and placements with TLS off and on,
# alternating, twice.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build -q --release -p bench --bin raft_load --bin placements -p api --bin drover
B=target/release
for round in 1 2; do
  for mode in off tls; do
    extra=(); [ "$mode" = tls ] && extra=(--tls)
    echo "=== raft_load round $round: $mode"
    $B/raft_load --system drover --drover-calls unary --clients 1,16,256 --seconds 10 "${extra[@]}" 2>&1 | grep -E "^\|"
  done
done
for round in 1 2; do
  for mode in off tls; do
    extra=(); [ "$mode" = tls ] && extra=(--tls)
    echo "=== placements round $round: $mode"
    $B/placements --domains 50000 --clients 256 "${extra[@]}" 2>&1 | grep -E "^\| (define|start)|placed"
  done
done
