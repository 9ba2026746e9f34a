"""Where inference runs: the pipes between the HTTP processes and the workers (links.py, the worker's end; and
dispatch.py, the HTTP process's end), the batching loop, the inference worker, and supervisor.py, the only
module that overrides LitServe's private methods."""
