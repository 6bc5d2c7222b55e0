//! Compiles the `.proto` files in-process with protox (no system `protoc`).

fn main() {
    let files = ["proto/drover/raft/v1/raft.proto"];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"]).expect("the protos compile");
    tonic_prost_build::configure().compile_fds(fds).expect("code generation succeeds");
}
