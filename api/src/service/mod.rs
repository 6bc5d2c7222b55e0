//! The public gRPC services. Each turns requests into `controlplane::Command`s submitted
//! through the replica ([`raft::node::Node::submit`]) and reads from its state.

pub mod audit;
pub mod domains;
pub mod events;
pub mod hosts;
pub mod migrations;
pub mod networks;
pub mod snapshots;
pub mod storage;
pub mod tokens;

use std::collections::BTreeMap;
use std::ops::Bound;

use controlplane::model::ResourceKind;
use controlplane::model::Role;
use controlplane::{Caller, Command, Committed, Rejection, Request, State};
use proto::api as pb;
use raft::node::Node;
use tonic::Status;

/// Metadata header naming who makes a change. Under TLS the server's door writes the
/// caller's proven identity into it (whatever the client sent); in insecure mode it is
/// taken on trust, and without it the principal is `anonymous`.
pub use raft::tls::PRINCIPAL_HEADER;

/// What every service holds: the replica it runs on.
#[derive(Debug, Clone)]
pub struct Api {
    pub node: Node,
}

impl Api {
    /// Submit `command` for the caller of `meta` under `request_id` (generated if empty).
    pub async fn write(
        &self,
        meta: &tonic::metadata::MetadataMap,
        ext: &tonic::Extensions,
        request_id: String,
        command: Command,
    ) -> Result<pb::WriteReply, Status> {
        let request = self.request(meta, ext, request_id, command)?;
        let committed: Committed = self.node.submit(request, false).await.map_err(|e| e.to_status())?;
        Ok(pb::WriteReply { first_seq: committed.first_seq, last_seq: committed.last_seq })
    }

    /// The request a write call makes: its principal, the caller's proven rights, its
    /// request id (one is drawn where the client gave none) and `command`.
    pub fn request(
        &self,
        meta: &tonic::metadata::MetadataMap,
        ext: &tonic::Extensions,
        request_id: String,
        command: Command,
    ) -> Result<Request, Status> {
        let principal = meta
            .get(PRINCIPAL_HEADER)
            .and_then(|v| v.to_str().ok())
            .map_or_else(|| raft::tls::ANONYMOUS.to_owned(), str::to_owned);
        // The rights the door proved; without TLS nobody is proven and all may do all.
        let caller = match ext.get::<raft::tls::Identity>() {
            Some(identity) => identity.caller(),
            None if self.node.transport().is_tls() => {
                return Err(Status::unauthenticated("no proven caller for a write"));
            }
            None => Caller::User(Role::Admin),
        };
        let request_id =
            if request_id.is_empty() { format!("auto-{:032x}", rand::random::<u128>()) } else { request_id };
        Ok(Request { request_id, principal, caller, command })
    }

    /// Submit the command `command(name)` built from a domain action request.
    pub async fn act(
        &self,
        request: tonic::Request<pb::DomainActionRequest>,
        command: fn(String) -> Command,
    ) -> Result<tonic::Response<pb::WriteReply>, Status> {
        let (meta, ext, r) = request.into_parts();
        Ok(tonic::Response::new(self.write(&meta, &ext, r.request_id, command(r.name)).await?))
    }

    /// Run `f` on a state as fresh as `consistency` asks.
    pub async fn read<T>(&self, consistency: i32, f: impl FnOnce(&State) -> T) -> Result<T, Status> {
        match pb::Consistency::try_from(consistency) {
            Ok(pb::Consistency::Local) => Ok(self.node.read_local(f)),
            Ok(pb::Consistency::Linearizable) => {
                self.node.read_linearizable(f).await.map_err(|e| e.to_status())
            }
            Err(_) => Err(Status::invalid_argument(format!("invalid consistency: {consistency}"))),
        }
    }
}

/// The NOT_FOUND answer for a read of a missing resource, worded like `decide`'s.
pub fn not_found(kind: ResourceKind, name: &str) -> Status {
    Status::not_found(Rejection::NotFound { kind, name: name.to_owned() }.to_string())
}

/// The most items one page of a List reply holds (a larger `page_size` is cut to it).
pub const LIST_PAGE_SIZE_MAX: u32 = 10_000;

/// One page of a list walked in key order: the first at most `page_size` (0: all) of
/// `from` (a map's entries after where the previous page ended: [`after`]), each
/// converted by `to_pb` (only those sent are), and the token to go on from ("" once the
/// list is done: the key of the last item sent, by `token_of`).
pub fn page<K, V, P>(
    from: impl Iterator<Item = (K, V)>,
    page_size: u32,
    token_of: impl Fn(&K) -> String,
    mut to_pb: impl FnMut(V) -> P,
) -> (Vec<P>, String) {
    let size = if page_size == 0 { usize::MAX } else { page_size.min(LIST_PAGE_SIZE_MAX) as usize };
    let mut out = Vec::new();
    let mut from = from.peekable();
    let mut last = None;
    while out.len() < size {
        let Some((k, v)) = from.next() else { break };
        out.push(to_pb(v));
        last = Some(k);
    }
    let more = from.peek().is_some();
    (out, last.filter(|_| more).map(|k| token_of(&k)).unwrap_or_default())
}

/// The range of a map's keys a page starts from: after `key` (the token's), or all.
pub fn after<K>(key: Option<K>) -> (Bound<K>, Bound<K>) {
    (key.map_or(Bound::Unbounded, Bound::Excluded), Bound::Unbounded)
}

/// One page of a map keyed by name, after the name `token` names ("": the first page).
pub fn page_by_name<V, P>(
    map: &BTreeMap<String, V>,
    token: &str,
    page_size: u32,
    to_pb: impl FnMut(&V) -> P,
) -> (Vec<P>, String) {
    let start = if token.is_empty() { Bound::Unbounded } else { Bound::Excluded(token) };
    page(map.range::<str, _>((start, Bound::Unbounded)), page_size, |k| k.to_string(), to_pb)
}

/// A page token that names a key of two names (`pool/volume`, `domain/snapshot`).
pub fn pair_token(token: &str) -> Result<Option<(String, String)>, Status> {
    if token.is_empty() {
        return Ok(None);
    }
    let (a, b) = token.split_once('/').ok_or_else(|| {
        Status::invalid_argument(format!("invalid page_token {token:?}: not from this list"))
    })?;
    Ok(Some((a.to_owned(), b.to_owned())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_holds_at_most_the_cap_and_goes_on_after_its_last_key() {
        let keys: BTreeMap<u32, u32> = (0..LIST_PAGE_SIZE_MAX + 5).map(|k| (k, k)).collect();
        let (items, token) = page(keys.range(after::<u32>(None)), u32::MAX, |k| k.to_string(), |v| *v);
        assert_eq!((items.len(), token.as_str()), (LIST_PAGE_SIZE_MAX as usize, "9999"));
        let (rest, token) = page(keys.range(after(Some(9_999))), 0, |k| k.to_string(), |v| *v);
        assert_eq!((rest, token.as_str()), (vec![10_000, 10_001, 10_002, 10_003, 10_004], ""));
        // A key gone since the last page: the next page starts after where it was.
        let named: BTreeMap<String, char> = [("a".to_string(), 'a'), ("c".to_string(), 'c')].into();
        let (after_gone, _) = page_by_name(&named, "b", 1, |v| *v);
        assert_eq!(after_gone, vec!['c']);
        assert_eq!(pair_token("p/v").unwrap(), Some(("p".into(), "v".into())));
        assert_eq!(pair_token("").unwrap(), None);
        assert_eq!(pair_token("pv").unwrap_err().code(), tonic::Code::InvalidArgument);
    }
}
