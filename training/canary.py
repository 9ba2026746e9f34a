"""`retrain --canary P`: ask the running server to try the published challenger as an automatic canary.

The server sees a new version at its next look at the repository (TABSERVE_POLL_INTERVAL), so an unknown
version (404) is asked again for up to a minute. The key comes from TABSERVE_MANAGEMENT_KEY (else TABSERVE_API_KEY).
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request

from bundle.manifest import Manifest
from training.errors import TrainingError

WAIT_SECONDS = 60.0


def start(server: str, manifest: Manifest, percent: float) -> str:
    key = os.environ.get("TABSERVE_MANAGEMENT_KEY") or os.environ.get("TABSERVE_API_KEY")
    body = json.dumps({"challenger": manifest.version, "percent": percent, "auto": True}).encode()
    headers = {"content-type": "application/json", **({"authorization": f"Bearer {key}"} if key else {})}
    url = f"{server}/v1/models/{manifest.name}/rollout"
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        try:
            with urllib.request.urlopen(urllib.request.Request(url, body, headers, method="POST"), timeout=30) as r:
                answer = json.load(r)
            return (f"Canary of v{answer['challenger']} against v{answer['champion']} at {percent:g} % started "
                    f"(make rollout-status MODEL={manifest.name}).")  # fmt: skip
        except urllib.error.HTTPError as e:
            error = e.read().decode(errors="replace")
            if e.code != 404 or time.monotonic() > deadline:
                raise TrainingError(f"the server refused the canary ({e.code}): {error}") from None
        except OSError as e:
            raise TrainingError(f"no answer from {server} to start the canary: {e}") from None
        time.sleep(1.0)
