#!/bin/bash
# What traces cost (bench/README.md): raft_load and placements with traces off, at 1 %
# and at 100 % sampling, and raft_load with metrics and 1 %; twice, in that order.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build -q --release -p bench --bin raft_load --bin placements -p api --bin drover
B=target/release
for round in 1 2; do
  for mode in off t001 t1 mt001; do
    case $mode in
      off) extra=();;
      t001) extra=(--trace-sample-ratio 0.01);;
      t1) extra=(--trace-sample-ratio 1);;
      mt001) extra=(--metrics --trace-sample-ratio 0.01);;
    esac
    echo "=== raft_load round $round: $mode"
    $B/raft_load --system drover --drover-calls unary --clients 1,16,256 --seconds 10 "${extra[@]}" 2>&1 | grep -E "^\||spans"
  done
done
for round in 1 2; do
  for mode in off t001 t1; do
    case $mode in
      off) extra=();;
      t001) extra=(--trace-sample-ratio 0.01);;
      t1) extra=(--trace-sample-ratio 1);;
    esac
    echo "=== placements round $round: $mode"
    $B/placements --domains 50000 --clients 256 "${extra[@]}" 2>&1 | grep -E "^\| (define|start)|spans|placed"
  done
done
