"""Train an MLP classifier on tabular features and publish it as an ONNX model bundle."""
