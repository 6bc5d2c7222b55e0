//! openraft's own storage test suite, run on both backends: sled and the in-memory disk.

use openraft::testing::{StoreBuilder, Suite};
use raft::kv_mem::MemKv;
use raft::kv_sled::SledKv;
use raft::log_store::LogStore;
use raft::state_machine::StateMachine;
use raft::type_config::{StorageError, TypeConfig};

struct MemBuilder;

impl StoreBuilder<TypeConfig, LogStore<MemKv>, StateMachine<MemKv>, ()> for MemBuilder {
    async fn build(&self) -> Result<((), LogStore<MemKv>, StateMachine<MemKv>), StorageError> {
        let kv = MemKv::new();
        Ok(((), LogStore::new(kv.clone()), StateMachine::open(kv, 100)?))
    }
}

struct SledBuilder;

impl StoreBuilder<TypeConfig, LogStore<SledKv>, StateMachine<SledKv>, tempfile::TempDir> for SledBuilder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore<SledKv>, StateMachine<SledKv>), StorageError> {
        let dir = tempfile::tempdir().expect("temp dir");
        let kv = SledKv::open(&dir.path().join("db")).expect("sled opens");
        Ok((dir, LogStore::new(kv.clone()), StateMachine::open(kv, 100)?))
    }
}

#[test]
fn openraft_suite_on_memory() {
    Suite::test_all(MemBuilder).unwrap();
}

#[test]
fn openraft_suite_on_sled() {
    Suite::test_all(SledBuilder).unwrap();
}
