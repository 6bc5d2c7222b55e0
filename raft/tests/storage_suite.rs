//! openraft's own storage test suite, run on every backend: the production pair (the
//! write-ahead log for the log, sled for the state machine), sled alone, and the in-memory
//! disk.

use openraft::testing::{StoreBuilder, Suite};
use raft::kv_mem::MemKv;
use raft::kv_sled::SledKv;
use raft::kv_wal::WalKv;
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

struct WalBuilder;

impl StoreBuilder<TypeConfig, LogStore<WalKv>, StateMachine<SledKv>, tempfile::TempDir> for WalBuilder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore<WalKv>, StateMachine<SledKv>), StorageError> {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = WalKv::open(&dir.path().join("log")).expect("the log opens");
        let kv = SledKv::open(&dir.path().join("db")).expect("sled opens");
        Ok((dir, LogStore::new(log), StateMachine::open(kv, 100)?))
    }
}

#[test]
fn openraft_suite_on_the_write_ahead_log_and_sled() {
    Suite::test_all(WalBuilder).unwrap();
}

#[test]
fn openraft_suite_on_memory() {
    Suite::test_all(MemBuilder).unwrap();
}

#[test]
fn openraft_suite_on_sled() {
    Suite::test_all(SledBuilder).unwrap();
}
