"""Cost of the Laplacian against the dimension d: trace of jax.hessian, folx, collapsed
Taylor mode (ours), and the stochastic estimator (k = 8), for the MLP of
benchmarks/bench_operators.py (3 hidden tanh layers of width 256, 32 points).

Left: measured run time (median, interleaved); right: XLA's FLOPs of each compiled
program. Timings run the benchmark, so take the benchmark lock on a shared machine:

    flock /tmp/fl_bench.lock python examples/operators_cost.py [--png docs/images/operators_cost.png]
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from benchmarks.bench_operators import curve  # noqa: E402

STYLE = {"jax.hessian trace": ("tab:red", "o"), "folx": ("tab:green", "s"), "ours": ("tab:blue", "D"),
         "ours stochastic k=8": ("tab:purple", "^")}


def main(png: str = "docs/images/operators_cost.png", ds=(4, 16, 64, 128, 256), reps: int = 11) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = curve(ds, reps=reps)
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    for name, (color, marker) in STYLE.items():
        if name not in data[ds[0]]["time"]:
            continue
        label = {"ours": "fl.laplacian (collapsed Taylor)",
                 "ours stochastic k=8": "fl.laplacian stochastic, k=8"}.get(name, name)
        a.plot(ds, [data[d]["time"][name] * 1e3 for d in ds], marker=marker, color=color, label=label)
        b.plot(ds, [data[d]["flops"][name] for d in ds], marker=marker, color=color, label=label)
    for ax, ylabel in ((a, "run time per call (ms), CPU, shared 2-core machine"), (b, "XLA FLOPs per call")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("input dimension d")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
    a.legend()
    fig.suptitle("Laplacian of an MLP R^d -> R (3 x 256 tanh), 32 points")
    os.makedirs(os.path.dirname(png) or ".", exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)
    for d in ds:
        print(f"d={d:4d} " + "  ".join(f"{k}: {v * 1e3:.2f} ms" for k, v in data[d]["time"].items()))
    print(f"written to {png}")
    return data


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--png", default="docs/images/operators_cost.png")
    args = parser.parse_args()
    main(args.png)
