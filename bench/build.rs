//! Compiles the etcd KV subset used as the replication reference, in-process (protox).

fn main() {
    let files = ["proto/etcdserverpb/kv.proto"];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"]).expect("the etcd protos compile");
    tonic_prost_build::configure().build_server(false).compile_fds(fds).expect("code generation succeeds");
}
