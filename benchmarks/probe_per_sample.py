"""Where the per-sample job's time goes on this machine (not part of `python -m benchmarks`).

`python -m benchmarks.probe_per_sample`, and once more pinned to one core with
`taskset -c 0 python -m benchmarks.probe_per_sample` to see what XLA's 2-thread split of
each kernel costs. It times, for `vmap(grad)` of the 64-256-1 MLP (batch 256):

- ours called back to back (steady state) vs after a 5 ms sleep (last of 5 calls), which
  is how the default nn rows time it against torch;
- the two kernels that write per-sample weight gradients, alone: the (256, 64, 256) outer
  product (16 MiB) and the (256, 256, 1) one;
- minor page faults per call (`getrusage`): glibc sometimes hands the 16 MiB output back
  to the OS after every call, and then each call faults 4,096 fresh pages.
"""

from __future__ import annotations

import os
import resource
import time

import jax
import jax.numpy as jnp

from .bench_nn import per_sample_setup
from .harness import Row, format_table, interleaved


def _faults_per_call(f, calls: int = 200) -> float:
    for _ in range(5):
        jax.block_until_ready(f())
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(calls):
        jax.block_until_ready(f())
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / calls


def main() -> None:
    params, x, y, ours, _, _ = per_sample_setup(quick=False)
    h = jnp.tanh(x @ params[0]["w"])
    outer = jax.jit(lambda a, b: jnp.einsum("bi,bj->bij", a, b))
    call = lambda: ours(params, x, y)
    steady = interleaved({"ours": call}, reps=21, burst=40, settle=15)["ours"]
    paused = interleaved({"ours": call}, reps=61, pause=0.005, burst=5)["ours"]
    kernels = interleaved({"16 MiB": lambda: outer(x, h), "256 KiB": lambda: outer(h, y)},
                          reps=21, burst=40, settle=15)
    cores = len(os.sched_getaffinity(0))
    rows = [
        Row("probe", f"ours, steady state ({cores} cores)", "s", steady, {"after 5 ms sleep": paused},
            note="ratio = paused/steady"),
        Row("probe", "kernel (256,64,256) = x (x) dz alone", "s", kernels["16 MiB"],
            note=f"{16 / 1024 / kernels['16 MiB']:.1f} GiB/s written"),
        Row("probe", "kernel (256,256,1) = h (x) g alone", "s", kernels["256 KiB"]),
        Row("probe", "minor page faults per call of ours", "", _faults_per_call(call),
            note="4096 = the whole 16 MiB output faulted in on every call"),
    ]
    print(f"# jax {jax.__version__}, {cores} usable cores, {time.strftime('%Y-%m-%d %H:%M')}")
    print(format_table(rows))


if __name__ == "__main__":
    main()
