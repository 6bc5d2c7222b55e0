//! The event archive on sled over a 1,000,000-event history: the state at a past
//! sequence number (nearest checkpoint + replay) and a full verify-style replay.
//! Run with `cargo bench -p bench --bench archive`; results go to bench/README.md.

use bench::history::{self, Shape};
use controlplane::{apply, state_hash, State};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use raft::archive::Archive;
use raft::kv::Kv;
use raft::kv_sled::SledKv;

const EVENTS: usize = 1_000_000;
const CHECKPOINT_EVERY: u64 = 10_000;

fn archive_benches(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let kv = SledKv::open(&dir.path().join("db")).expect("sled opens");
    let archive = Archive::new(kv.clone(), CHECKPOINT_EVERY);
    let envelopes = history::envelopes(EVENTS, Shape::default());
    let mut state = State::new();
    for chunk in envelopes.chunks(1000) {
        for e in chunk {
            let before = state.last_seq();
            apply(&mut state, e);
            archive.checkpoint(&state, before, false).expect("checkpoint");
        }
        archive.record(0, chunk).expect("record");
    }
    futures_lite_block_on(kv.flush()).expect("flush");
    let last = state.last_seq();
    let live = state_hash(&state);

    let mut group = c.benchmark_group("archive");
    group.sample_size(20);
    // The worst case: the event just before the last checkpoint, so a whole interval
    // (10,000 events, or more if the state grew large enough to stretch it) replays.
    let last_checkpoint = archive.checkpoint_at_or_before(last).expect("read").expect("a checkpoint");
    let worst = last_checkpoint - 1;
    let previous = archive.checkpoint_at_or_before(worst).expect("read").expect("an earlier checkpoint");
    eprintln!(
        "checkpoint interval {} events ({} bytes of state); worst case replays {} events after the checkpoint at {previous}",
        archive.checkpoint_interval(),
        controlplane::codec::encode(&state).len(),
        worst - previous
    );
    group
        .bench_function("state_at_worst_1m", |b| b.iter(|| archive.state_at(worst, last).expect("state at")));
    group.bench_function("state_at_checkpoint_1m", |b| {
        b.iter(|| archive.state_at(last_checkpoint, last).expect("state at"))
    });
    group.sample_size(10);
    group.throughput(Throughput::Elements(last));
    group.bench_function("verify_replay_1m", |b| {
        b.iter(|| {
            let mut s = State::new();
            let mut next = 1;
            while next <= last {
                for e in archive.events(next, 10_000).expect("events") {
                    apply(&mut s, &e.envelope);
                    next += 1;
                }
            }
            assert_eq!(state_hash(&s), live);
        })
    });
    group.finish();
}

/// Drive one future to completion on a small runtime (sled's flush is async).
fn futures_lite_block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime").block_on(f)
}

criterion_group!(benches, archive_benches);
criterion_main!(benches);
