"""Bytes ↔ validated rows and answers, per protocol: the simple API's instances (and their bulk JSON fast path),
Open Inference Protocol tensors, explain bodies, and the encoded answers. Pure functions over an `InputSpec`."""
