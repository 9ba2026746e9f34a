"""Serve the model repository over HTTP: a simple JSON API and the Open Inference Protocol, on LitServe."""
