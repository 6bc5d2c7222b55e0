//! Compiles the `.proto` files in-process with protox (no system `protoc`).

fn main() {
    let files = [
        "proto/drover/raft/v1/raft.proto",
        "proto/drover/api/v1/types.proto",
        "proto/drover/api/v1/domains.proto",
        "proto/drover/api/v1/hosts.proto",
        "proto/drover/api/v1/networks.proto",
        "proto/drover/api/v1/storage.proto",
        "proto/drover/api/v1/snapshots.proto",
        "proto/drover/api/v1/migrations.proto",
        "proto/drover/api/v1/events.proto",
        "proto/drover/api/v1/audit.proto",
        "proto/drover/api/v1/tokens.proto",
        "proto/drover/host/v1/host.proto",
    ];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"]).expect("the protos compile");
    // The descriptor set also feeds gRPC reflection.
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    std::fs::write(out.join("drover_descriptor.bin"), prost::Message::encode_to_vec(&fds))
        .expect("descriptor written");
    tonic_prost_build::configure().compile_fds(fds).expect("code generation succeeds");
}
