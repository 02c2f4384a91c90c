"""mesh= on the sparse Jacobian and Hessian, on 4 simulated CPU devices (a subprocess
with XLA_FLAGS=--xla_force_host_platform_device_count=4: JAX fixes its device count at
start-up). One script runs every check and prints JSON; the tests assert on its parts.

The compressed passes (one per color) are split over the devices; each value is compared
with the single-device sparse result (float64: bitwise, the per-color arithmetic is the
same) and with the dense ``jax.jacfwd``/``jax.hessian`` (float32: <= 1e-6 relative).
The transforms are called through ``functorch_lite._sparse``, and two cases through the
public ``fl.jacobian(..., sparse=True, mesh=)`` / ``fl.hessian(..., sparse=True, mesh=)``,
which must forward ``mesh=`` there (not drop it).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

# one 4-device subprocess of ~70 s: CI's slow step runs the module
pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = textwrap.dedent(r"""
    import json
    import jax, jax.numpy as jnp, numpy as np
    import functorch_lite as fl
    from functorch_lite import _sparse

    assert jax.device_count() == 4, jax.devices()
    mesh = jax.make_mesh((4,), ("data",))
    mesh2d = jax.make_mesh((2, 2), ("model", "data"))

    def tridiagonal(u):                      # 3 colors: fewer than the 4 devices
        p = jnp.pad(u, 1)
        return p[:-2] - 2 * u + p[2:] + u * (1 - u)

    def arrowhead(x):                        # bicoloring: 2 JVPs + 1 VJP
        return jnp.concatenate([jnp.sum(x ** 2)[None], x[1:] ** 3 + x[0]])

    def blocks(x):                           # 2-D input, 8 colors: 2 per device
        g = x.reshape(6, 8)
        return (jnp.sin(g) * jnp.sum(g, axis=1, keepdims=True)).reshape(-1)

    def rosenbrock(x):
        return jnp.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)

    def pair(a, b):                          # tuple argnums Hessian
        return jnp.sum(a[1:] * a[:-1] * b[0]) + jnp.sum(b ** 3)

    def rel(a, b):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))

    def leaves(t):
        return [np.asarray(l.todense() if hasattr(l, "todense") else l)
                for l in jax.tree.leaves(t, is_leaf=lambda v: hasattr(v, "todense"))]

    def compare(sharded, single, dense):
        a, b, d = leaves(sharded), leaves(single), leaves(dense)
        return {"bitwise": all(np.array_equal(u, v) for u, v in zip(a, b)),
                "rel_single": max(rel(u, v) for u, v in zip(a, b)),
                "rel_dense": max(rel(u, v) for u, v in zip(a, d)),
                "shapes": [list(u.shape) for u in a] == [list(v.shape) for v in d]}

    out = {}
    for dtype in ("float32", "float64"):
        jax.config.update("jax_enable_x64", dtype == "float64")
        dt = jnp.dtype(dtype)
        k = jax.random.split(jax.random.key(0), 3)
        x = jax.random.normal(k[0], (40,), dt)
        x48 = jax.random.normal(k[1], (48,), dt)
        a, b = jax.random.normal(k[2], (10,), dt), jnp.arange(1.0, 4.0, dtype=dt)
        J, H = _sparse.jacobian, _sparse.hessian
        cases = {
            "tridiagonal": (J(tridiagonal, mesh=mesh), J(tridiagonal), jax.jacfwd(tridiagonal), (x,)),
            "arrowhead_bi": (J(arrowhead, mesh=mesh), J(arrowhead), jax.jacrev(arrowhead), (x,)),
            "arrowhead_rev": (J(arrowhead, mode="rev", mesh=mesh), J(arrowhead, mode="rev"),
                              jax.jacrev(arrowhead), (x,)),
            "blocks_chunk": (J(blocks, chunk_size=1, mesh=mesh), J(blocks), jax.jacfwd(blocks), (x48,)),
            "blocks_jit": (jax.jit(J(blocks, mesh=mesh)), jax.jit(J(blocks)), jax.jacfwd(blocks), (x48,)),
            "blocks_dense_out": (J(blocks, output="dense", mesh=mesh), J(blocks, output="dense"),
                                 jax.jacfwd(blocks), (x48,)),
            "mesh2d_axis": (J(arrowhead, mesh=mesh2d, mesh_axis="data"), J(arrowhead),
                            jax.jacrev(arrowhead), (x,)),
            "hessian": (H(rosenbrock, mesh=mesh), H(rosenbrock), jax.hessian(rosenbrock), (x,)),
            "hessian_rev_over_rev": (H(rosenbrock, mode="rev-over-rev", chunk_size=2, mesh=mesh),
                                     H(rosenbrock, mode="rev-over-rev"), jax.hessian(rosenbrock), (x,)),
            "public_jacobian": (fl.jacobian(arrowhead, sparse=True, mesh=mesh), J(arrowhead),
                                jax.jacrev(arrowhead), (x,)),
            "public_hessian": (fl.hessian(rosenbrock, sparse=True, mesh=mesh), H(rosenbrock),
                               jax.hessian(rosenbrock), (x,)),
            "hessian_tuple": (H(pair, argnums=(0, 1), mesh=mesh), H(pair, argnums=(0, 1)),
                              jax.hessian(pair, argnums=(0, 1)), (a, b)),
        }
        out[dtype] = {name: compare(s(*args), one(*args), dense(*args))
                      for name, (s, one, dense, args) in cases.items()}
        out[dtype]["passes"] = {"tridiagonal": _sparse.sparsity(tridiagonal, x).plan().passes,
                                "blocks": _sparse.sparsity(blocks, x48).plan().passes}

    jax.config.update("jax_enable_x64", False)
    x = jnp.linspace(-1.0, 1.0, 40)
    g = _sparse.jacobian(arrowhead, mesh=mesh, gather=True)(x)
    out["gather_replicated"] = bool(g.data.sharding.is_fully_replicated)
    gp = fl.jacobian(arrowhead, sparse=True, mesh=mesh, gather=True)(x)
    out["public_gather_replicated"] = bool(gp.data.sharding.is_fully_replicated)

    bad = {
        "missing_axis": lambda: _sparse.jacobian(arrowhead, mesh=mesh, mesh_axis="model"),
        "not_a_mesh": lambda: _sparse.hessian(rosenbrock, mesh="data"),
        "axis_without_mesh": lambda: _sparse.jacobian(arrowhead, mesh_axis="data"),
        "inside_shard_map": lambda: jax.shard_map(
            lambda v: _sparse.jacobian(arrowhead, mesh=mesh)(v).data, mesh=mesh,
            in_specs=jax.sharding.PartitionSpec(), out_specs=jax.sharding.PartitionSpec())(x),
    }
    errors = dict.fromkeys(bad)                 # None: no error raised
    for name, call in bad.items():
        try:
            call()
        except (TypeError, ValueError) as e:
            errors[name] = [type(e).__name__, str(e)]
    out["errors"] = errors
    print("RESULT" + json.dumps(out))
""")


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    script = tmp_path_factory.mktemp("sparse_mesh") / "sparse_mesh_checks.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.split("RESULT", 1)[1])


CASES = ["tridiagonal", "arrowhead_bi", "arrowhead_rev", "blocks_chunk", "blocks_jit",
         "blocks_dense_out", "mesh2d_axis", "hessian", "hessian_rev_over_rev", "hessian_tuple", "public_jacobian", "public_hessian"]


@pytest.mark.parametrize("case", CASES)
def test_float32_equals_one_device_and_dense(result, case):
    r = result["float32"][case]
    assert r["shapes"]
    assert r["rel_single"] <= 1e-6, r
    assert r["rel_dense"] <= 1e-5, r


@pytest.mark.parametrize("case", CASES)
def test_float64_bitwise_equal_to_one_device(result, case):
    # bitwise where the per-device program keeps the single-device arithmetic; a jitted
    # split program and the Hessian's fused gradient reorder sums: round-off only
    r = result["float64"][case]
    if case in ("blocks_jit", "hessian", "hessian_rev_over_rev", "public_hessian"):
        assert r["rel_single"] <= 1e-13, r
    else:
        assert r["bitwise"], r
    assert r["rel_dense"] <= 1e-12, r


def test_color_counts_against_devices(result):
    # fewer colors than devices (padding: devices with no color compute zeros) and more
    assert result["float32"]["passes"]["tridiagonal"] == 3
    assert result["float32"]["passes"]["blocks"] > 4


def test_gather_replicates_the_values(result):
    assert result["gather_replicated"] is True
    assert result["public_gather_replicated"] is True


def test_bad_mesh_arguments(result):
    e = result["errors"]
    assert e["missing_axis"][0] == "ValueError" and "mesh_axis='model'" in e["missing_axis"][1]
    assert "jacobian" in e["missing_axis"][1]
    assert e["not_a_mesh"][0] == "TypeError" and "hessian: mesh must be a jax.sharding.Mesh" in e["not_a_mesh"][1]
    assert e["axis_without_mesh"][0] == "ValueError" and "only apply with mesh=" in e["axis_without_mesh"][1]
    assert e["inside_shard_map"][0] == "ValueError" and "already split" in e["inside_shard_map"][1]
    assert "jacobian(arrowhead, sparse=True)" in e["inside_shard_map"][1]
