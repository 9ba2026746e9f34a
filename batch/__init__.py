"""Batch scoring: a whole table through a verified model version, with the served numbers (`python -m batch`).

Input chunk → checked features (rejects) → ONNX Runtime (bundle/session.py, as the server opens it) → ordered
parts on disk (resume) → one output file that appears whole. Imports neither `service` nor torch (pyproject.toml).
"""
