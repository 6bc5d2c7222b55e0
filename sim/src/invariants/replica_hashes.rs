//! Protects: **replicas agree.** Any two replicas that have applied the same log index
//! have states with the same hash.

use std::collections::BTreeMap;

use controlplane::StateHash;
use raft::type_config::NodeId;

/// `samples`: (replica, last applied log index, state hash), taken at one instant.
pub fn check(samples: &[(NodeId, u64, StateHash)]) -> Vec<String> {
    let mut by_index: BTreeMap<u64, Vec<(NodeId, StateHash)>> = BTreeMap::new();
    for (id, index, hash) in samples {
        by_index.entry(*index).or_default().push((*id, *hash));
    }
    by_index
        .into_iter()
        .filter(|(_, v)| v.windows(2).any(|w| w[0].1 != w[1].1))
        .map(|(index, v)| {
            let list: Vec<String> = v.iter().map(|(id, h)| format!("replica {id}: {h}")).collect();
            format!("at log index {index} the states differ: {}", list.join(", "))
        })
        .collect()
}
