"""`make bench`: tabserve against the HTTP floor, a hand-written FastAPI server and vanilla LitServe.

Every number is measured in one run, on one model, with one load generator (`hey`), because absolute figures
drift 2× between runs on a shared 2-core machine; only ratios within a run are comparable.
"""
