"""The data plane both protocols share: the gateway (one `prepare` step for every front-end, then `submit`),
admission control, the inline lane, and server and model metadata. It knows no protocol: rest/ and grpc/
translate to and from it."""
