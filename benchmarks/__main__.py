"""Run the benchmarks and print one table: `python -m benchmarks [--quick] [--only core ...]`."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import platform
import sys

import jax

from .harness import format_table


def available() -> list[str]:
    import benchmarks

    return sorted(m.name[len("bench_"):] for m in pkgutil.iter_modules(benchmarks.__path__)
                  if m.name.startswith("bench_"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, fewer repetitions")
    parser.add_argument("--only", nargs="*", default=None, metavar="NAME",
                        help=f"run only these groups (of {', '.join(available())})")
    args = parser.parse_args(argv)
    names = args.only or available()
    unknown = sorted(set(names) - set(available()))
    if unknown:
        parser.error(f"unknown benchmark group(s) {unknown}; choose from {available()}")
    print(f"# jax {jax.__version__} on {jax.default_backend()} ({platform.processor() or platform.machine()}), "
          f"python {sys.version.split()[0]}{' (quick)' if args.quick else ''}")
    rows = []
    for name in names:
        module = importlib.import_module(f"benchmarks.bench_{name}")
        group_rows = module.run(quick=args.quick)
        print(format_table(group_rows), flush=True)
        print()
        rows.extend(group_rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
