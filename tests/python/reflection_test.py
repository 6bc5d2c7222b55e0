"""A client that knows nothing of Drover's protos: it learns them from the server's
reflection service (grpcio-reflection, which speaks v1alpha), lists the services, and
calls Domains/List with messages built from the descriptors it fetched.

Usage: python3 reflection_test.py HOST:PORT
"""

import sys

import grpc
from google.protobuf import descriptor_pool, message_factory
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase


def main(address):
    channel = grpc.insecure_channel(address)
    grpc.channel_ready_future(channel).result(timeout=10)
    database = ProtoReflectionDescriptorDatabase(channel)
    services = set(database.get_services())
    for wanted in ("drover.api.v1.Domains", "drover.api.v1.Snapshots", "grpc.health.v1.Health"):
        assert wanted in services, f"{wanted} is not listed: {sorted(services)}"
    pool = descriptor_pool.DescriptorPool(database)
    method = pool.FindServiceByName("drover.api.v1.Domains").FindMethodByName("List")
    request_class = message_factory.GetMessageClass(method.input_type)
    reply_class = message_factory.GetMessageClass(method.output_type)
    call = channel.unary_unary(
        "/drover.api.v1.Domains/List",
        request_serializer=request_class.SerializeToString,
        response_deserializer=reply_class.FromString,
    )
    reply = call(request_class(), timeout=10)
    names = [d.name for d in reply.domains]
    print(f"services {len(services)}, domains {names}")
    print("reflection ok")


if __name__ == "__main__":
    main(sys.argv[1])
