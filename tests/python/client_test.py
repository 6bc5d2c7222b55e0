#!/usr/bin/env python3
"""A client not written in Rust: grpcio stubs generated from proto/ at run time.

Defines, starts and lists a domain against the Drover replica at ENDPOINT (argv[1]),
registering and readying a host first so the domain has somewhere to run; with a TLS
directory (argv[2]: ca.pem, cert.pem, key.pem) over mutual TLS. Exits 0 on success; any
failure raises.
"""
import os
import sys
import tempfile

from grpc_tools import protoc


def generate(proto_root: str, out: str) -> None:
    api = os.path.join(proto_root, "drover", "api", "v1")
    files = [os.path.join(api, f) for f in sorted(os.listdir(api)) if f.endswith(".proto")]
    include = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    args = ["protoc", f"-I{proto_root}", f"-I{include}", f"--python_out={out}", f"--grpc_python_out={out}", *files]
    if protoc.main(args) != 0:
        raise SystemExit("generating the Python stubs failed")


def main() -> None:
    endpoint = sys.argv[1]
    proto_root = os.path.join(os.path.dirname(__file__), "..", "..", "proto", "proto")
    out = tempfile.mkdtemp(prefix="drover-py-")
    generate(proto_root, out)
    sys.path.insert(0, out)
    import grpc
    from drover.api.v1 import domains_pb2, domains_pb2_grpc, hosts_pb2, hosts_pb2_grpc, types_pb2

    if len(sys.argv) > 2:
        # Mutual TLS: the directory drover's --tls-dir takes (ca.pem, cert.pem, key.pem).
        tls = sys.argv[2]
        read = lambda f: open(os.path.join(tls, f), "rb").read()
        creds = grpc.ssl_channel_credentials(
            root_certificates=read("ca.pem"), private_key=read("key.pem"), certificate_chain=read("cert.pem"))
        channel = grpc.secure_channel(endpoint, creds)
    else:
        channel = grpc.insecure_channel(endpoint)
    grpc.channel_ready_future(channel).result(timeout=30)
    meta = [("drover-principal", "python")]
    hosts = hosts_pb2_grpc.HostsStub(channel)
    hosts.Register(hosts_pb2.RegisterHostRequest(
        request_id="py-h1", name="py-h1", address="127.0.0.1:9301",
        capacity=types_pb2.Resources(vcpus=2, memory_mib=2048)), metadata=meta)
    hosts.SetState(hosts_pb2.SetHostStateRequest(request_id="py-h1-ready", name="py-h1", state=types_pb2.HOST_STATE_READY), metadata=meta)

    domains = domains_pb2_grpc.DomainsStub(channel)
    spec = types_pb2.DomainSpec(vcpus=1, memory_mib=128,
                                kernel=types_pb2.KernelBoot(kernel="/var/lib/drover/vmlinux", cmdline="console=ttyS0"))
    reply = domains.Define(domains_pb2.DefineDomainRequest(request_id="py-def", name="py-web", spec=spec), metadata=meta)
    assert reply.last_seq >= reply.first_seq > 0, reply
    domains.Start(domains_pb2.DomainActionRequest(request_id="py-start", name="py-web"), metadata=meta)
    listed = domains.List(domains_pb2.ListDomainsRequest())
    web = [d for d in listed.domains if d.name == "py-web"]
    assert len(web) == 1, listed
    assert web[0].desired == types_pb2.DESIRED_STATE_RUNNING and web[0].status.host == "py-h1", web[0]

    try:
        domains.Start(domains_pb2.DomainActionRequest(name="py-web"), metadata=meta)
        raise AssertionError("starting a running domain was accepted")
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.FAILED_PRECONDITION, e
    print("python client: define, start and list ok")


if __name__ == "__main__":
    main()
