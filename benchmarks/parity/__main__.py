"""`python -m benchmarks.parity`: see benchmarks/parity/driver.py and docs/parity.md."""

import argparse
import json
import sys
from pathlib import Path

from benchmarks.parity import driver


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.parity",
        description="Logits of PyTorch references vs keras_deeplab on equal weights.",
    )
    parser.add_argument("--systems", help="comma-separated system modules (default: all)")
    parser.add_argument("--out", default=str(driver.DEFAULT_OUT), help="results JSON (merged)")
    parser.add_argument("--torch-python", help="python of the torch venv (default: the venv's)")
    parser.add_argument(
        "--docs",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="rewrite docs/parity.md's table from the JSON (default: when --out is the default)",
    )
    parser.add_argument(
        "--no-run", action="store_true", help="run nothing (with --docs: only rewrite the table)"
    )
    parser.add_argument("--list", action="store_true", help="list the systems and their cases")
    args = parser.parse_args(argv)
    if args.docs is None:
        args.docs = Path(args.out).resolve() == driver.DEFAULT_OUT.resolve()
    if args.list:
        for name in driver.discover_systems():
            print(f"{name}: {', '.join(driver.load_system(name).CASES)}")
        return 0
    if args.no_run:
        if args.docs:
            out = Path(args.out)
            with driver.results_lock(out):
                data = json.loads(out.read_text()) if out.exists() else {"results": {}}
                driver.rewrite_docs(data)
        return 0
    systems = [s.strip() for s in args.systems.split(",") if s.strip()] if args.systems else None
    try:
        rows, _ = driver.run(
            systems, args.out, args.torch_python, driver.DOCS if args.docs else None
        )
    except driver.ParityError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    driver.print_rows(rows)
    failed = [f"{r['system']}/{r['case']}" for r in rows if not r["passed"]]
    for row in rows:
        if "error" in row:
            print(f"\n{row['system']}/{row['case']}: {row['error']}", file=sys.stderr)
    if failed:
        print(f"parity: {len(failed)} case(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    print(f"parity: {len(rows)} case(s) within the bound; results in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
