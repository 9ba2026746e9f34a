"""The Open Inference Protocol over gRPC: a thin translator over the same `Gateway` as the REST routes.

`server.py` makes and stops the grpc.aio server of one HTTP process, `servicer.py` answers the RPCs of
`inference.GRPCInferenceService`, `tensors.py` turns protobuf tensors into validated rows and answers back,
`status_codes.py` maps tabserve's errors to gRPC status codes, and `port.py` checks the port before LitServe forks.
Registry, validation, admission, deadlines, batching, metrics and the API key are the data plane's; only the
encoding differs. Never imported by rest/, nor by the main process before the fork (service/server.py).
"""
