"""functorch_lite's benchmarks: `python -m benchmarks [--quick] [--only NAME ...]`.

Each `bench_*.py` module here has `run(quick: bool) -> list[Row]`; `__main__` runs them
all (or those named) and prints one table of ratios. See ../shared/BENCHMARKING.md for
the rules: compile outside the timed region, interleave contenders, median of >= 20.
"""
