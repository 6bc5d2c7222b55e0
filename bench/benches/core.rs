//! Criterion benches of the pure core: apply, decide, and replaying a 1 M-event history.
//! Run with `cargo bench -p bench --bench core`; results go to bench/README.md.

use bench::history::{self, Shape};
use controlplane::fixtures::kernel_spec;
use controlplane::{apply, decide, state_hash, Command, Request, State};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

fn apply_events(c: &mut Criterion) {
    let events = history::envelopes(100_000, Shape::default());
    let mut group = c.benchmark_group("apply");
    group.throughput(Throughput::Elements(events.len() as u64));
    group.bench_function("100k_events", |b| {
        b.iter(|| {
            let mut state = State::new();
            for e in &events {
                apply(&mut state, e);
            }
            state
        })
    });
    group.finish();
}

fn decide_commands(c: &mut Criterion) {
    let mut h = history::generate(200_000, Shape::default());
    h.exec(Command::DefineDomain { name: "bench-stopped".into(), spec: kernel_spec(1, 256) })
        .expect("a stopped domain to start");
    let request = |command| Request {
        request_id: "bench-1".into(),
        principal: "bench".into(),
        caller: controlplane::Caller::Cluster,
        command,
    };
    let define = request(Command::DefineDomain { name: "bench-new".into(), spec: kernel_spec(1, 256) });
    let live = h.state.domains().values().find(|d| d.is_placed()).expect("a running domain").name.clone();
    let reboot = request(Command::RebootDomain { name: live });
    // Start runs the scheduler over every host (100 here).
    let start = request(Command::StartDomain { name: "bench-stopped".into() });
    let mut group = c.benchmark_group("decide");
    group.throughput(Throughput::Elements(1));
    group.bench_function("define", |b| b.iter(|| decide(&h.state, &define, 1).expect("define decides")));
    group.bench_function("reboot", |b| b.iter(|| decide(&h.state, &reboot, 1).expect("reboot decides")));
    group.bench_function("start_100_hosts", |b| {
        b.iter(|| decide(&h.state, &start, 1).expect("start decides"))
    });
    group.finish();
}

fn replay_1m(c: &mut Criterion) {
    let events = history::envelopes(1_000_000, Shape::default());
    let mut group = c.benchmark_group("replay");
    group.sample_size(10);
    group.throughput(Throughput::Elements(events.len() as u64));
    group.bench_function("1m_events", |b| {
        b.iter_batched(
            State::new,
            |mut state| {
                for e in &events {
                    apply(&mut state, e);
                }
                state
            },
            BatchSize::LargeInput,
        )
    });
    let mut state = State::new();
    events.iter().for_each(|e| apply(&mut state, e));
    group.throughput(Throughput::Elements(1));
    group.bench_function("state_hash_after_1m", |b| b.iter(|| state_hash(&state)));
    group.finish();
}

criterion_group!(benches, apply_events, decide_commands, replay_1m);
criterion_main!(benches);
