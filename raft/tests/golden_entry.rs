//! A raft log entry written by an earlier raft format still decodes: the log a replica
//! holds on disk outlives the build that wrote it. `DROVER_WRITE_GOLDEN=1` writes a
//! golden file that does not exist yet (never overwrites one).

use std::path::PathBuf;

use controlplane::fixtures::{kernel_spec, register_host, Harness};
use controlplane::model::HostState;
use controlplane::{decide, Command, Decision, Proposal, TraceParent};
use openraft::{CommittedLeaderId, EntryPayload};
use raft::encoding;
use raft::type_config::{Entry, LogId, ProposalBatch};

fn golden(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(name)
}

/// A host registered and made ready, a domain defined and started: four proposals in one
/// entry.
fn entry() -> Entry {
    let mut h = Harness::new();
    let mut proposals: Vec<Proposal> = Vec::new();
    for c in [
        register_host("h1", 64, 1 << 20),
        Command::SetHostState { name: "h1".into(), state: HostState::Ready },
        Command::DefineDomain { name: "web".into(), spec: kernel_spec(1, 64) },
        Command::StartDomain { name: "web".into() },
    ] {
        let r = h.request(c);
        let Ok(Decision::Propose(p)) = decide(&h.state, &r, h.now_ms) else { panic!("decides") };
        proposals.push(p);
        h.submit(&r).unwrap();
    }
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(3, 1), 42),
        payload: EntryPayload::Normal(ProposalBatch(std::sync::Arc::new(proposals))),
    }
}

fn proposals_of(e: &Entry) -> Vec<Proposal> {
    match &e.payload {
        EntryPayload::Normal(b) => b.0.to_vec(),
        other => panic!("not a normal entry: {other:?}"),
    }
}

#[test]
fn raft_format_1_entries_still_decode() {
    let path = golden("entry-raft1.bin");
    if std::env::var_os("DROVER_WRITE_GOLDEN").is_some() && !path.exists() {
        std::fs::write(&path, encoding::encode(&entry())).unwrap();
    }
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(bytes[0], 1, "raft format 1");
    let old: Entry = encoding::decode(&bytes).unwrap();
    assert_eq!(old.log_id, entry().log_id);
    assert_eq!(proposals_of(&old), proposals_of(&entry()));
}

#[test]
fn todays_entries_carry_each_proposal_in_the_codec_with_its_trace() {
    let mut e = entry();
    if let EntryPayload::Normal(b) = &mut e.payload {
        let mut proposals = b.0.to_vec();
        proposals[0].trace = Some(TraceParent { trace_id: [7; 16], span_id: [9; 8], flags: 1 });
        b.0 = std::sync::Arc::new(proposals);
    }
    let bytes = encoding::encode(&e);
    assert_eq!(bytes[0], encoding::RAFT_FORMAT_VERSION);
    let back: Entry = encoding::decode(&bytes).unwrap();
    assert_eq!(proposals_of(&back), proposals_of(&e));
    assert_eq!(proposals_of(&back)[0].trace.unwrap().span_id, [9; 8]);
    // A future raft format is refused, not misread.
    let mut future = bytes.clone();
    future[0] = encoding::RAFT_FORMAT_VERSION + 1;
    assert!(encoding::decode::<Entry>(&future).is_err());
}

/// A membership written in raft format 2 named one address per member, where a replica
/// served its peer services and public API on one port: it decodes as both.
#[test]
fn raft_format_2_memberships_decode_with_one_address_as_both() {
    use raft::type_config::Member;
    let bytes = std::fs::read(golden("membership-raft2.bin")).unwrap();
    assert_eq!(bytes[0], 2, "raft format 2");
    let old: Entry = encoding::decode(&bytes).unwrap();
    assert_eq!(old.log_id, LogId::new(CommittedLeaderId::new(2, 1), 7));
    let EntryPayload::Membership(m) = &old.payload else { panic!("not a membership: {old:?}") };
    assert_eq!(m.voter_ids().collect::<Vec<_>>(), [1, 2]);
    assert_eq!(m.get_node(&1), Some(&Member::new("10.0.0.1:7401", "10.0.0.1:7401")));
    assert_eq!(m.get_node(&101), Some(&Member::new("10.0.1.1:7500", "10.0.1.1:7500")));
    // Written again today, each member keeps its two addresses apart.
    let mut nodes = m.nodes().map(|(id, n)| (*id, n.clone())).collect::<std::collections::BTreeMap<_, _>>();
    nodes.insert(1, Member::new("10.0.0.1:7451", "10.0.0.1:7401"));
    nodes.insert(101, Member::new("10.0.1.1:7500", ""));
    let now = openraft::Membership::new(vec![[1u64, 2].into_iter().collect()], nodes);
    let e = Entry { log_id: old.log_id, payload: EntryPayload::Membership(now.clone()) };
    let back: Entry = encoding::decode(&encoding::encode(&e)).unwrap();
    let EntryPayload::Membership(back) = back.payload else { panic!("not a membership") };
    assert_eq!(back, now);
}
