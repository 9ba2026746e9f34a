"""The Open Inference Protocol over gRPC: a thin translator over the same `Gateway` as the REST routes.

`server.py` makes and stops the grpc.aio server of one HTTP process, `servicer.py` answers the RPCs of
`inference.GRPCInferenceService`, `tensors.py` turns protobuf tensors into validated rows and answers back, and
`status.py` maps tabserve's errors to gRPC status codes. Registry, validation, admission, deadlines, batching,
metrics and the API key are the REST path's own; only the encoding differs.
"""
