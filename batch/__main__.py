"""`python -m batch`: score a whole table (CSV or Parquet; a file, a folder or a glob) with a served model.

Writes the output (kept columns, label, p_<class> per class, in input order), the rejects (rows that could not be
scored, with a reason) and OUT.summary.json. Exit codes: 0 done, 2 refused before scoring (the message says
why), 1 failed while scoring (an unfinished run continues with --resume), 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from batch.errors import BatchError
from batch.run import DEFAULT_CHUNK_ROWS, Request, score_table

INTERRUPTED = 130


def _columns(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m batch", description=__doc__)
    p.add_argument("--repository", type=Path, default=Path("models"), help="the model repository (default: models)")
    p.add_argument("--name", required=True, help="the model to score with")
    p.add_argument("--version", type=int, help="default: the version the server answers with (policy.json)")
    p.add_argument("--input", required=True, help="a .csv/.parquet file, a folder of them, or a glob")
    p.add_argument("--output", type=Path, required=True, help="OUT.parquet or OUT.csv")
    p.add_argument("--rejects", type=Path, help="default: OUT's stem + .rejects + OUT's extension, beside it")
    p.add_argument("--keep", type=_columns, default=[], help="input columns to copy to the output, e.g. row_id")
    p.add_argument("--chunk-rows", type=int, default=DEFAULT_CHUNK_ROWS, help="rows per chunk (and resume part)")
    p.add_argument("--engine", choices=["local", "ray"], default="local", help="local threads, or Ray Data")
    p.add_argument("--address", help="--engine ray: a Ray cluster (default: RAY_ADDRESS, else a local Ray)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from its finished parts")
    p.add_argument("--quiet", action="store_true", help="no progress bar (there is none when stderr is no TTY)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    request = Request(
        repository=args.repository, name=args.name, version=args.version, input=args.input, output=args.output,
        rejects=args.rejects, keep=args.keep, chunk_rows=args.chunk_rows, engine=args.engine, resume=args.resume,
        quiet=args.quiet, address=args.address,
    )  # fmt: skip
    try:
        s = score_table(request)
    except BatchError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except Exception as e:  # reading or writing failed midway: no output was written, the parts are kept
        print(f"failed: {type(e).__name__}: {e}; run again with --resume to continue", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: run again with --resume to continue from the finished parts", file=sys.stderr)
        return INTERRUPTED
    print(
        f"{s['model']} v{s['version']}: rows in {s['rows_in']:,} = out {s['rows_out']:,} + rejected "
        f"{s['rows_rejected']:,} in {s['seconds']:.1f} s ({s['rows_per_second'] or 0:,.0f} rows/s, {s['engine']}) "
        f"→ {s['output']}, rejects {s['rejects']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
