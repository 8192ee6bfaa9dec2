"""The gRPC front end: the Open Inference Protocol's ``inference.GRPCInferenceService``.

- :mod:`.server`: the server factory (inference service, health, reflection; start and stop);
- :mod:`.inference`: the inference servicer, one method per rpc;
- :mod:`.health`: the standard ``grpc.health.v1.Health`` servicer;
- :mod:`.loop_bridge`: from a call's thread to the data plane's event loop;
- :mod:`.codec`: protobuf messages to and from the protocol-neutral types.
"""
