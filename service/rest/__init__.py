"""HTTP: the pure-ASGI fast path for prediction routes, the FastAPI routes for everything else, the repository
extension's routes, the OpenAPI document's additions, and uvicorn's missing HTTP limits (limits.py)."""
