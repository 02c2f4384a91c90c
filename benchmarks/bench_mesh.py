"""mesh=: per-device memory and time against the device count (1, 2, 4 simulated CPU devices).

Two jobs, each run in its own subprocess per device count (JAX fixes its device count at
start-up, ``XLA_FLAGS=train.cpu_device_flags(d)``):

1. ``jacrev`` of the wide function R^512 -> R^8192 -> R^512 (``W2 tanh(W1 x)``), the
   512 VJPs split over the mesh, against the same Jacobian on one device (no mesh).
2. The NTK of examples/ntk_mesh.py (the torch.func tutorial's CNN, 16 x 16 images, 8
   training against 4 test samples), computed blockwise over the mesh
   (``_mesh.sharded_pairs``: each device computes the Jacobians of its share of both sets;
   the test blocks travel around the devices, a ring), against one device's.

Memory is XLA's own plan, ``memory_analysis().temp_size_in_bytes`` of the compiled SPMD
program, which is per device; the figure that must hold is memory per device ~ 1/d.
Time is the median of interleaved runs (mesh vs no mesh). Simulated CPU devices are
threads sharing this machine's cores (two here), so time is not expected to fall with d:
the split adds the collectives and the per-device forward pass; on real devices each
runs its share in parallel.

    python -m benchmarks --only mesh [--quick]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

from .harness import Row

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = textwrap.dedent(r"""
    import json, sys
    import jax, jax.numpy as jnp
    import functorch_lite as fl
    from benchmarks.harness import interleaved
    sys.path.insert(0, "examples")
    from ntk_mesh import init_cnn, ntk

    quick = sys.argv[1] == "quick"
    d = jax.device_count()
    mesh = jax.make_mesh((d,), ("data",))
    out = {}

    def measure(name, single, split, *args):
        cs = jax.jit(single).lower(*args).compile()
        cm = jax.jit(split).lower(*args).compile()
        t = interleaved({"single": lambda: cs(*args), "mesh": lambda: cm(*args)},
                        reps=5 if quick else 21, warmup=1)
        out[name] = {"temp_single": cs.memory_analysis().temp_size_in_bytes,
                     "temp_mesh": cm.memory_analysis().temp_size_in_bytes,
                     "out_mesh": cm.memory_analysis().output_size_in_bytes,
                     "t_single": t["single"], "t_mesh": t["mesh"]}

    k = jax.random.split(jax.random.key(0), 3)
    W1 = jax.random.normal(k[0], (8192, 512)) / 20
    W2 = jax.random.normal(k[1], (512, 8192)) / 90
    wide = lambda x: W2 @ jnp.tanh(W1 @ x)
    measure("jacrev wide", fl.jacrev(wide), fl.jacrev(wide, mesh=mesh), jax.random.normal(k[2], (512,)))

    params = init_cnn(k[0], 16)
    x1 = jax.random.normal(k[1], (8, 3, 16, 16))
    x2 = jax.random.normal(k[2], (4, 3, 16, 16))
    measure("ntk", ntk, lambda p, a, b: ntk(p, a, b, mesh), params, x1, x2)
    print("RESULT" + json.dumps(out))
""")


def _one(devices: int, quick: bool) -> dict:
    from functorch_lite.train import cpu_device_flags

    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "XLA_FLAGS": cpu_device_flags(devices), "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, "quick" if quick else "full"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=1800)
    if proc.returncode:
        raise RuntimeError(f"bench_mesh with {devices} devices failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.split("RESULT", 1)[1])


def run(quick: bool = False) -> list[Row]:
    rows = []
    for d in (1, 2, 4):
        res = _one(d, quick)
        for job, r in res.items():
            rows.append(Row("mesh", f"{job}: temp per device, {d} device(s)", "B", r["temp_mesh"],
                            {"one device": r["temp_single"]}, target=f"~{d}x (memory ~ 1/devices)",
                            note=f"output per device {r['out_mesh']} B"))
            rows.append(Row("mesh", f"{job}: time, {d} simulated device(s)", "s", r["t_mesh"],
                            {"one device": r["t_single"]},
                            note="simulated devices share 2 cores: time is not expected to fall"))
    return rows
