//! Everything a control replica serves: the public API with gRPC health and reflection on
//! its public port, the replication services of `raft` on its peer port (or all on one
//! port, for a replica without one), each behind the door of its transport
//! ([`raft::tls`]), which refuses what its port does not serve.

use std::future::Future;

use futures::FutureExt;
use proto::api::audit_server::AuditServer;
use proto::api::domains_server::DomainsServer;
use proto::api::events_server::EventsServer;
use proto::api::hosts_server::HostsServer;
use proto::api::migrations_server::MigrationsServer;
use proto::api::networks_server::NetworksServer;
use proto::api::snapshots_server::SnapshotsServer;
use proto::api::storage_pools_server::StoragePoolsServer;
use proto::api::tokens_server::TokensServer;
use proto::api::volumes_server::VolumesServer;
use raft::node::Node;
use raft::service::{bind, listen, raft_server, replication_server, server_builder, ServeError};
use raft::tls::{Port, TokenBook};
use tonic::transport::server::TcpIncoming;

use crate::service::Api;

/// Largest public API request (a domain definition is a few KiB).
pub const API_REQUEST_BYTES_MAX: usize = 1 << 20;
/// Largest public API response (a list of every domain).
pub const API_RESPONSE_BYTES_MAX: usize = 64 << 20;

/// Serve every service until `shutdown` resolves: the public API and the peer services on
/// ports of their own where the node has a peer port, else all on one.
pub async fn serve(
    node: Node,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let public = listen(&node).await?;
    let Some(peer_addr) = node.peer_listen_addr() else {
        return serve_public(node, Port::Both, public, shutdown).await;
    };
    let peer = bind(&node, peer_addr).await?;
    let shutdown = shutdown.shared();
    let peers = server_builder(node.transport())?
        .layer(crate::metrics::MetricsLayer)
        .layer(crate::traces::TracesLayer)
        .layer(node.transport().door(Port::Peer))
        .add_service(raft_server(node.clone()))
        .add_service(replication_server(node.clone()))
        .serve_with_incoming_shutdown(peer, shutdown.clone());
    let (served_public, served_peers) =
        tokio::join!(serve_public(node, Port::Public, public, shutdown), peers);
    served_public?;
    served_peers?;
    Ok(())
}

/// The public API, health and reflection on `incoming`, with the peer services too where
/// `port` is [`Port::Both`] (on [`Port::Public`] the replication service is there for its
/// status only: the door refuses the rest).
async fn serve_public(
    node: Node,
    port: Port,
    incoming: TcpIncoming,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let api = Api { node: node.clone() };
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter.set_serving::<DomainsServer<Api>>().await;
    // Reflection in both versions clients speak (grpcurl and Postman use v1; Python's
    // grpcio-reflection, up to its newest release, only v1alpha), listing the health
    // service too.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1().expect("the descriptor sets are valid");
    let reflection_v1alpha = reflection().build_v1alpha().expect("the descriptor sets are valid");
    macro_rules! limited {
        ($server:ident) => {
            $server::new(api.clone())
                .max_decoding_message_size(API_REQUEST_BYTES_MAX)
                .max_encoding_message_size(API_RESPONSE_BYTES_MAX)
        };
    }
    // The door last, so that the metrics and traces layers see its refusals too.
    server_builder(node.transport())?
        .layer(crate::metrics::MetricsLayer)
        .layer(crate::traces::TracesLayer)
        .layer(node.transport().door(port).with_tokens(token_book(&node)))
        .add_optional_service((port == Port::Both).then(|| raft_server(node.clone())))
        .add_service(replication_server(node))
        .add_service(limited!(DomainsServer))
        .add_service(limited!(HostsServer))
        .add_service(limited!(NetworksServer))
        .add_service(limited!(StoragePoolsServer))
        .add_service(limited!(VolumesServer))
        .add_service(limited!(SnapshotsServer))
        .add_service(limited!(MigrationsServer))
        .add_service(limited!(EventsServer))
        .add_service(limited!(AuditServer))
        .add_service(limited!(TokensServer))
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await?;
    Ok(())
}

/// The bearer tokens of this replica's applied state, for its door.
fn token_book(node: &Node) -> TokenBook {
    let node = node.clone();
    TokenBook::new(move |name| node.read_local(|s| s.token(name).cloned()))
}
