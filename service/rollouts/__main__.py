"""`python -m service.rollouts canary|status|promote|stop --model M …`: the rollout routes of a running server
(`make canary`, `make rollout-status`, `make promote`, `make rollout-stop`). The key comes from --key or
TABSERVE_MANAGEMENT_KEY (else TABSERVE_API_KEY); the answer is printed as JSON; exit 1 on an error answer."""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service.rollouts", description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["canary", "status", "promote", "stop"])
    parser.add_argument("--model", required=True)
    parser.add_argument("--version", type=int, help="canary: the challenger")
    parser.add_argument("--percent", type=float, default=10.0, help="canary: share of requests (10)")
    parser.add_argument("--manual", action="store_true", help="canary: no automatic decision")
    parser.add_argument("--url", default=f"http://127.0.0.1:{os.environ.get('PORT', '8000')}")
    key = os.environ.get("TABSERVE_MANAGEMENT_KEY") or os.environ.get("TABSERVE_API_KEY")
    parser.add_argument("--key", default=key, help="default: TABSERVE_MANAGEMENT_KEY, else TABSERVE_API_KEY")
    args = parser.parse_args(argv)
    if args.action == "canary" and args.version is None:
        parser.error("canary needs --version (the challenger)")
    path = f"{args.url}/v1/models/{args.model}/rollout"
    method, url, body = {
        "canary": ("POST", path, {"challenger": args.version, "percent": args.percent, "auto": not args.manual}),
        "status": ("GET", path, None),
        "promote": ("POST", path + "/promote", None),
        "stop": ("DELETE", path, None),
    }[args.action]
    headers = {"content-type": "application/json", **({"authorization": f"Bearer {args.key}"} if args.key else {})}
    request = urllib.request.Request(url, json.dumps(body).encode() if body else None, headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            print(json.dumps(json.load(response), indent=2))
            return 0
    except urllib.error.HTTPError as e:
        print(e.read().decode(errors="replace"), file=sys.stderr)
        return 1
    except OSError as e:
        print(f"no answer from {args.url}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
