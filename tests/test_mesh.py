"""mesh= on jacrev, jacfwd, jacobian, hessian, hessian_diag, vmap and laplacian, on 4 simulated CPU
devices (a subprocess with XLA_FLAGS=--xla_force_host_platform_device_count=4: JAX fixes
its device count at start-up). One script runs every check and prints JSON; the tests
assert on its parts. Each transform is compared with its single-device value (float32:
<= 1e-6 relative; float64: bitwise where the per-device program keeps the arithmetic of
the single-device one, else <= 1e-13), the result's sharding is checked shard by shard,
and the per-device temp memory of the split Jacobian of R^512 -> R^512 through width 8192
and of the blockwise NTK of examples/ntk_mesh.py are compared with one device's (XLA's
memory_analysis() of an SPMD program is per device).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import functorch_lite as fl
from functorch_lite import _mesh

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = textwrap.dedent(r"""
    import json, sys
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P
    import functorch_lite as fl
    from functorch_lite import _mesh

    assert jax.device_count() == 4, jax.devices()
    out = {}
    mesh = jax.make_mesh((4,), ("data",))
    mesh2d = jax.make_mesh((2, 2), ("model", "data"))

    def rel(a, b):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))

    def compare(a, b):
        la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
        assert jax.tree.structure(a) == jax.tree.structure(b), (jax.tree.structure(a), jax.tree.structure(b))
        return {"rel": max(rel(x, y) for x, y in zip(la, lb)),
                "bitwise": all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(la, lb)),
                "shapes": all(np.shape(x) == np.shape(y) for x, y in zip(la, lb))}

    def shards(x):
        return sorted(tuple(s.data.shape) for s in x.addressable_shards)

    def problems(dtype):
        k = jax.random.split(jax.random.key(0), 4)
        W1 = jax.random.normal(k[0], (64, 12), dtype) / 3
        W2 = jax.random.normal(k[1], (16, 64), dtype) / 8
        f = lambda x: W2 @ jnp.tanh(W1 @ x)                    # R^12 -> R^16
        h = lambda x: jnp.sum(jnp.tanh(W1 @ x) ** 2) + jnp.sum(x ** 4)
        x = jax.random.normal(k[2], (12,), dtype)
        X = jax.random.normal(k[3], (8, 12), dtype)
        tree = lambda p, y: {"a": jnp.sin(p["w"]) * y[0], "b": (p["w"][:4] * y).sum(), "c": jnp.outer(y, p["v"])}
        p = {"w": x[:8], "v": x[8:]}
        y = x[:4] * 2
        return f, h, x, X, tree, p, y

    part = sys.argv[1]
    for dtype in (("float32",) if part == "core" else ("float64",)):
        jax.config.update("jax_enable_x64", dtype == "float64")
        f, h, x, X, tree, p, y = problems(jnp.dtype(dtype))
        key = jax.random.key(3)
        cases = {
            "jacrev": (fl.jacrev(f, mesh=mesh), fl.jacrev(f), (x,)),
            "jacrev_chunk": (fl.jacrev(f, chunk_size=3, mesh=mesh), fl.jacrev(f), (x,)),
            "jacrev_denominator": (fl.jacrev(f, layout="denominator", mesh=mesh), fl.jacrev(f, layout="denominator"), (x,)),
            "jacfwd": (fl.jacfwd(f, mesh=mesh), fl.jacfwd(f), (x,)),
            "jacfwd_chunk": (fl.jacfwd(f, chunk_size=2, mesh=mesh), fl.jacfwd(f), (x,)),
            "jacobian_auto": (fl.jacobian(f, mesh=mesh), fl.jacrev(f), (x,)),
            "jacobian_fwd": (fl.jacobian(f, mode="fwd", mesh=mesh), fl.jacfwd(f), (x,)),
            "jacrev_tree": (fl.jacrev(tree, argnums=(0, 1), mesh=mesh), fl.jacrev(tree, argnums=(0, 1)), (p, y)),
            "jacfwd_tree": (fl.jacfwd(tree, argnums=(0, 1), mesh=mesh), fl.jacfwd(tree, argnums=(0, 1)), (p, y)),
            "jacrev_aux": (fl.jacrev(lambda x: (f(x), x.sum()), has_aux=True, mesh=mesh),
                           fl.jacrev(lambda x: (f(x), x.sum()), has_aux=True), (x,)),
            "jacrev_2d_mesh": (fl.jacrev(f, mesh=mesh2d, mesh_axis="data"), fl.jacrev(f), (x,)),
            "jacrev_jit": (jax.jit(fl.jacrev(f, mesh=mesh)), fl.jacrev(f), (x,)),
            "hessian": (fl.hessian(h, mesh=mesh), fl.hessian(h), (x,)),
            "hessian_chunk": (fl.hessian(h, chunk_size=2, mesh=mesh), fl.hessian(h), (x,)),
            "hessian_rev_over_rev": (fl.hessian(h, mode="rev-over-rev", mesh=mesh), fl.hessian(h, mode="rev-over-rev"), (x,)),
            "hessian_diag": (fl.hessian_diag(h, mesh=mesh), fl.hessian_diag(h), (x,)),
            "hessian_diag_chunk": (fl.hessian_diag(h, chunk_size=2, mesh=mesh), fl.hessian_diag(h), (x,)),
            "hutchinson": (fl.hessian_diag(h, method="hutchinson", key=key, num_samples=10, chunk_size=2, mesh=mesh),
                           fl.hessian_diag(h, method="hutchinson", key=key, num_samples=10), (x,)),
            "vmap": (fl.vmap(f, mesh=mesh), jax.vmap(f), (X,)),
            "vmap_chunk": (fl.vmap(f, chunk_size=1, mesh=mesh), jax.vmap(f), (X,)),
            "vmap_dims": (fl.vmap(lambda a, b: f(a) * b, in_dims=(1, None), out_dims=1, mesh=mesh),
                          jax.vmap(lambda a, b: f(a) * b, in_axes=(1, None), out_axes=1), (X.T, jnp.asarray(2, x.dtype))),
            "vmap_uneven": (fl.vmap(f, mesh=mesh), jax.vmap(f), (X[:6],)),
            "per_sample_grads": (fl.vmap(fl.grad(lambda x, t: jnp.sum((f(x) - t) ** 2)), in_dims=(0, None), mesh=mesh),
                                 jax.vmap(jax.grad(lambda x, t: jnp.sum((f(x) - t) ** 2)), in_axes=(0, None)),
                                 (X, jnp.ones(16, x.dtype))),
        }
        g = lambda x: jnp.sum(x ** 4) + jnp.sum(x) ** 2 + jnp.exp(jnp.sum(x) / 4)   # convex: no cancellation
        vec = lambda x: jnp.stack([h(x), jnp.sum(jnp.sin(x) ** 3)])
        u = lambda x: jnp.sum(jnp.sin(x) ** 2) * jnp.sum(jnp.cos(x))
        lap_key = dict(method="stochastic", num_samples=10, key=key)
        cases.update({
            "laplacian": (fl.laplacian(h, mesh=mesh), fl.laplacian(h), (x,)),
            "laplacian_uneven": (fl.laplacian(u, mesh=mesh), fl.laplacian(u), (x[:10],)),  # 3 + 3 + 3 + 1
            "laplacian_vector": (fl.laplacian(vec, mesh=mesh), fl.laplacian(vec), (x,)),
            "laplacian_tree": (fl.laplacian(tree, argnums=(0, 1), mesh=mesh), fl.laplacian(tree, argnums=(0, 1)), (p, y)),
            "laplacian_2d_mesh": (fl.laplacian(h, mesh=mesh2d, mesh_axis="data"), fl.laplacian(h), (x,)),
            "laplacian_jit": (jax.jit(fl.laplacian(h, mesh=mesh)), fl.laplacian(h), (x,)),
            "laplacian_stochastic": (fl.laplacian(g, mesh=mesh, **lap_key), fl.laplacian(g, **lap_key), (x,)),
            "laplacian_std": (fl.laplacian(g, mesh=mesh, return_std=True, distribution="gaussian", **lap_key),
                              fl.laplacian(g, return_std=True, distribution="gaussian", **lap_key), (x,)),
            "vmap_laplacian": (fl.vmap(fl.laplacian(h), mesh=mesh), jax.vmap(fl.laplacian(h)), (X,)),
        })
        def under_set_mesh(t):
            def run(*a):
                with jax.set_mesh(mesh):
                    return jax.jit(t)(*a)
            return run
        cases["jacrev_under_set_mesh"] = (under_set_mesh(fl.jacrev(f, mesh=mesh)), fl.jacrev(f), (x,))
        cases["vmap_sharded_input"] = (fl.vmap(f, mesh=mesh), jax.vmap(f),
                                       (jax.device_put(X, NamedSharding(mesh, P("data"))),))
        res = {}
        for name, (sharded, single, args) in cases.items():
            res[name] = compare(sharded(*args), single(*args))
        out[dtype] = res

    def core_checks():
        J = fl.jacrev(f, mesh=mesh)(x)                       # 16 rows over 4 devices
        G = fl.jacrev(f, mesh=mesh, gather=True)(x)
        F = fl.jacfwd(f, mesh=mesh)(x)                       # 12 columns over 4 devices
        V = fl.vmap(f, mesh=mesh)(X)
        out["sharding"] = {
            "jacrev": [spec(J), shards(J)], "gather": [spec(G), shards(G), G.sharding.is_fully_replicated],
            "jacfwd": [spec(F), shards(F)], "vmap": [spec(V), shards(V)],
        }
        # a basis smaller than the device count: padded with zero basis vectors
        small = lambda x: jnp.stack([jnp.sum(x ** 3), jnp.sum(jnp.sin(x))])     # R^12 -> R^2: 2 rows on 4 devices
        out["small_basis"] = compare(fl.jacrev(small, mesh=mesh)(x), fl.jacrev(small)(x))
        out["small_basis"]["spec"] = spec(fl.jacrev(small, mesh=mesh)(x))
        out["small_batch"] = compare(fl.vmap(f, mesh=mesh)(X[:3]), jax.vmap(f)(X[:3]))
        out["split"] = _mesh.split_plan(10, mesh, chunk_size=2).describe()
        bad_input_checks()

    def memory_checks():
        # per-device temp memory of the split Jacobian of R^512 -> R^512 through width 8192
        k = jax.random.split(jax.random.key(1), 3)
        W1 = jax.random.normal(k[0], (8192, 512)) / 20
        W2 = jax.random.normal(k[1], (512, 8192)) / 90
        wide = lambda x: W2 @ jnp.tanh(W1 @ x)
        xw = jax.random.normal(k[2], (512,))
        mem = {}
        for name, t in (("single", fl.jacrev(wide)), ("mesh", fl.jacrev(wide, mesh=mesh)),
                        ("mesh_chunk", fl.jacrev(wide, mesh=mesh, chunk_size=32))):
            m = jax.jit(t).lower(xw).compile().memory_analysis()
            mem[name] = {"temp": m.temp_size_in_bytes, "output": m.output_size_in_bytes}
        mem["accuracy"] = compare(fl.jacrev(wide, mesh=mesh)(xw), fl.jacrev(wide)(xw))
        out["memory"] = mem
        # the NTK of examples/ntk_mesh.py, computed blockwise over the mesh
        sys.path.insert(0, sys.argv[2])
        from ntk_mesh import init_cnn, ntk
        params = init_cnn(k[0], 16)
        x1, x2 = jax.random.normal(k[1], (8, 3, 16, 16)), jax.random.normal(k[2], (4, 3, 16, 16))
        split = lambda p, a, b: ntk(p, a, b, mesh)
        out["ntk"] = {name: jax.jit(t).lower(params, x1, x2).compile().memory_analysis().temp_size_in_bytes
                      for name, t in (("single", ntk), ("mesh", split))}
        out["ntk"]["accuracy"] = compare(jax.jit(split)(params, x1, x2), jax.jit(ntk)(params, x1, x2))

    def bad_input_checks():
        # bad input on the 4-device mesh
        def outcome(fn):     # [exception type, message], or None when fn() succeeds
            try:
                fn()
            except (TypeError, ValueError) as e:
                return [type(e).__name__, str(e)]
            return None
        big = lambda x: jnp.sin(x) * 2.0
        xb = jax.ShapeDtypeStruct((300_000,), jnp.float32)   # J: 300000^2 float32 = 335 GiB
        other = jax.make_mesh((2,), ("data",), devices=jax.devices()[:2])
        def under_other_mesh():
            with jax.set_mesh(other):
                jax.jit(fl.jacrev(f, mesh=mesh))(x)
        cases = {
            "gather_too_large": lambda: jax.eval_shape(fl.jacrev(big, mesh=mesh, gather=True), xb),
            "uneven_too_large": lambda: jax.eval_shape(fl.jacfwd(big, mesh=mesh),
                                                       jax.ShapeDtypeStruct((300_001,), jnp.float32)),
            "inside_shard_map": lambda: jax.shard_map(lambda v: fl.jacrev(f, mesh=mesh)(v), mesh=mesh,
                                                      in_specs=P(), out_specs=P())(x),
            "other_mesh_context": under_other_mesh,
            "missing_axis": lambda: fl.hessian(h, mesh=mesh, mesh_axis="model"),
            "laplacian_missing_axis": lambda: fl.laplacian(h, mesh=mesh, mesh_axis="model"),
            "laplacian_small_basis": lambda: fl.laplacian(h, mesh=mesh)(x[:3]),
            "laplacian_few_samples": lambda: fl.laplacian(h, method="stochastic", num_samples=2,
                                                          key=jax.random.key(0), mesh=mesh)(x),
        }
        out["errors"] = {name: outcome(fn) for name, fn in cases.items()}
    jax.config.update("jax_enable_x64", False)
    f, h, x, X, tree, p, y = problems(jnp.float32)
    spec = lambda a: [str(e) for e in a.sharding.spec]
    if part == "slow":
        memory_checks()
    else:
        core_checks()
    print("RESULT" + json.dumps(out))
""")


def _run(tmp_path_factory, part):
    script = tmp_path_factory.mktemp("mesh") / "mesh_checks.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, str(script), part, os.path.join(ROOT, "examples")], env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.split("RESULT", 1)[1])


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    """float32 transforms, shardings, padding and bad input."""
    return _run(tmp_path_factory, "core")


@pytest.fixture(scope="module")
def slow_result(tmp_path_factory):
    """float64 transforms and the wide Jacobian's memory (two big compiles)."""
    return _run(tmp_path_factory, "slow")


# Cases whose per-device program does the single-device arithmetic exactly in float64
# (elementwise work, or a dot whose shape the split does not change); the others run a
# matrix product over p = ceil(B / 4) instead of B rows, which XLA may sum in another order.
BITWISE_FLOAT64 = ("jacfwd", "jacrev_tree", "jacfwd_tree", "vmap_dims")


@pytest.mark.slow   # the 4-device subprocess fixture takes ~35 s
def test_every_mesh_transform_equals_one_device_float32(result):
    res = result["float32"]
    assert len(res) == 34
    for name, r in res.items():
        assert r["shapes"], name
        assert r["rel"] <= 1e-6, (name, r)


@pytest.mark.slow
def test_every_mesh_transform_equals_one_device_float64(slow_result):
    res = slow_result["float64"]
    for name, r in res.items():
        assert r["shapes"], name
        assert r["rel"] <= 1e-13, (name, r)
    for name in BITWISE_FLOAT64:
        assert res[name]["bitwise"], (name, res[name])


@pytest.mark.slow   # the 4-device subprocess fixture takes ~35 s
def test_results_are_sharded_along_the_basis_axis(result):
    s = result["sharding"]
    assert s["jacrev"] == [["data"], [[4, 12]] * 4]          # 16 output rows / 4
    assert s["jacfwd"] == [["None", "data"], [[16, 3]] * 4]  # 12 input columns / 4
    assert s["vmap"] == [["data"], [[2, 16]] * 4]            # 8 batch rows / 4
    assert s["gather"] == [[], [[16, 12]] * 4, True]


@pytest.mark.slow   # the 4-device subprocess fixture takes ~35 s
def test_basis_smaller_than_the_device_count_is_zero_padded(result):
    r = result["small_basis"]
    assert r["bitwise"] or r["rel"] <= 1e-6, r
    assert r["spec"] == []   # 2 rows cannot be split over 4 devices: replicated
    assert result["small_batch"]["rel"] <= 1e-6
    assert result["split"] == ("basis of 10 split over mesh axis 'data' (4 devices): 3 passes "
                               "per device (2 zero padding), 2 at a time (2 steps)")


@pytest.mark.slow
def test_per_device_temp_memory_of_the_wide_jacobian(slow_result):
    m = slow_result["memory"]
    assert m["mesh"]["temp"] <= 0.3 * m["single"]["temp"], m
    assert m["mesh_chunk"]["temp"] < m["mesh"]["temp"], m      # chunk_size still bounds each device
    assert m["mesh"]["output"] * 4 == m["single"]["output"], m  # each device holds a quarter of J
    assert m["accuracy"]["rel"] <= 1e-6, m["accuracy"]


@pytest.mark.slow
def test_per_device_temp_memory_of_the_ntk(slow_result):
    """The NTK's kernel is computed blockwise over a ring: no device holds all of J(x1) or
    J(x2), so its temp memory falls as 1/d too (an all-gathered J(x2) left it at 0.44x).
    A device holds the Jacobians of (N + 2M) / d = (8 + 2 * 4) / 4 = 4 of the 12 samples
    (its 2 of x1, the x2 block it combines and the one arriving): about 1/3, measured 0.32x."""
    m = slow_result["ntk"]
    assert m["mesh"] <= 0.35 * m["single"], m
    assert m["accuracy"]["rel"] <= 1e-6, m["accuracy"]


@pytest.mark.slow   # the 4-device subprocess fixture takes ~35 s
def test_bad_input_on_the_mesh(result):
    e = result["errors"]
    kind, msg = e["gather_too_large"]
    assert kind == "ValueError" and "jacrev(" in msg and "335.3 GiB" in msg and "gather=True" in msg, msg
    kind, msg = e["uneven_too_large"]
    assert kind == "ValueError" and "does not divide evenly" in msg, msg
    kind, msg = e["inside_shard_map"]
    assert kind == "ValueError" and "already split by an enclosing jax.shard_map" in msg, msg
    kind, msg = e["other_mesh_context"]
    assert kind == "ValueError" and "differs from the mesh this code is traced under" in msg, msg
    kind, msg = e["missing_axis"]
    assert kind == "ValueError" and "hessian: mesh_axis='model' is not an axis" in msg, msg
    kind, msg = e["laplacian_missing_axis"]
    assert kind == "ValueError" and "laplacian: mesh_axis='model' is not an axis" in msg, msg
    kind, msg = e["laplacian_small_basis"]
    assert kind == "ValueError" and msg.startswith("laplacian(<lambda>, mesh=...)(*args): the 3 first-order"), msg
    assert "the 4 devices of mesh axis 'data' (mesh=)" in msg and "at most 3 devices" in msg, msg
    kind, msg = e["laplacian_few_samples"]
    assert kind == "ValueError" and "num_samples=2 random directions cannot be split" in msg, msg
    assert "or more num_samples" in msg, msg


# ----------------------------------------------------------------- in this process (1 device)


def test_mesh_argument_checks():
    f = lambda x: jnp.sin(x)  # noqa: E731
    with pytest.raises(TypeError, match=r"jacrev: mesh must be a jax.sharding.Mesh"):
        fl.jacrev(f, mesh="data")
    with pytest.raises(ValueError, match=r"vmap: mesh_axis='batch' is not an axis of the mesh, whose axes are \('data',\)"):
        fl.vmap(f, mesh=jax.make_mesh((1,), ("data",)), mesh_axis="batch")
    with pytest.raises(ValueError, match=r"jacfwd: mesh_axis= and gather=True only apply with mesh="):
        fl.jacfwd(f, gather=True)
    with pytest.raises(TypeError, match=r"hessian_diag: expected gather to be True or False"):
        fl.hessian_diag(f, mesh=jax.make_mesh((1,), ("data",)), gather="yes")
    with pytest.raises(TypeError, match=r"an AbstractMesh has no devices"):
        fl.jacobian(f, mesh=jax.make_mesh((1,), ("data",)).abstract_mesh)
    with pytest.raises(TypeError, match=r"laplacian: mesh must be a jax.sharding.Mesh"):
        fl.laplacian(f, mesh="data")
    with pytest.raises(ValueError, match=r"laplacian: mesh_axis='batch' is not an axis of the mesh"):
        fl.laplacian(f, mesh=jax.make_mesh((1,), ("data",)), mesh_axis="batch")
    with pytest.raises(ValueError, match=r"laplacian: mesh_axis= .* only apply with mesh="):
        fl.laplacian(f, mesh_axis="data")


def test_one_device_mesh_equals_no_mesh():
    mesh = jax.make_mesh((1,), ("data",))
    A = jnp.arange(12.0).reshape(3, 4) / 7
    f = lambda x: jnp.tanh(A @ x)  # noqa: E731
    x = jnp.linspace(-1, 1, 4)
    np.testing.assert_allclose(fl.jacrev(f, mesh=mesh)(x), jax.jacrev(f)(x), rtol=1e-6)
    np.testing.assert_allclose(fl.jacfwd(f, mesh=mesh, chunk_size=3)(x), jax.jacfwd(f)(x), rtol=1e-6)
    h = lambda x: jnp.sum(f(x) ** 2)  # noqa: E731
    np.testing.assert_allclose(fl.hessian(h, mesh=mesh)(x), jax.hessian(h)(x), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(fl.hessian_diag(h, mesh=mesh)(x), jnp.diag(jax.hessian(h)(x)), rtol=1e-5, atol=1e-7)
    X = jnp.ones((5, 4)) * jnp.arange(5.0)[:, None]
    np.testing.assert_allclose(fl.vmap(f, mesh=mesh, chunk_size=2)(X), jax.vmap(f)(X), rtol=1e-6)
    lap = jnp.trace(jax.hessian(h)(x))
    np.testing.assert_allclose(fl.laplacian(h, mesh=mesh)(x), lap, rtol=1e-5)


def test_sharded_basis_map_sum_and_padding():
    mesh = jax.make_mesh((1,), ("data",))
    w = jnp.arange(3.0)
    rows = _mesh.sharded_basis_map(lambda w: (lambda i: w * i), 5, mesh=mesh, operands=(w,), chunk_size=2)
    np.testing.assert_array_equal(rows, jnp.arange(5.0)[:, None] * w[None, :])
    total = _mesh.sharded_basis_map(lambda w: (lambda i: w * i), 5, mesh=mesh, operands=(w,), reduce="sum")
    np.testing.assert_array_equal(total, 10.0 * w)
    with pytest.raises(ValueError, match="reduce must be None or 'sum'"):
        _mesh.sharded_basis_map(lambda w: (lambda i: w), 5, mesh=mesh, operands=(w,), reduce="mean")


def test_device_memory_bytes_reports_a_source():
    free, source = _mesh.device_memory_bytes(jax.devices()[0])
    assert free > 0 and isinstance(source, str) and source


TWO_PROCESSES = r'''
import sys, json
import jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")
pid = int(sys.argv[1])
jax.distributed.initialize(coordinator_address="127.0.0.1:" + sys.argv[2], num_processes=2, process_id=pid)
import jax.numpy as jnp, numpy as np
import functorch_lite as fl
from jax.experimental import multihost_utils
assert jax.device_count() == 2 and jax.local_device_count() == 1, (jax.devices(), jax.local_devices())
mesh = jax.make_mesh((2,), ("data",))
A = jnp.asarray(np.arange(48.0, dtype=np.float32).reshape(8, 6) / 10)
f = lambda x: jnp.tanh(A @ x)
x = jnp.asarray(np.linspace(-1, 1, 6, dtype=np.float32))
J = fl.jacrev(f, mesh=mesh)(x)
full = multihost_utils.process_allgather(J, tiled=True)
ref = np.asarray(jax.jacrev(f)(x))
print("RESULT" + json.dumps({"local_shapes": [list(s.data.shape) for s in J.addressable_shards],
      "rel": float(np.max(np.abs(full - ref)) / np.max(np.abs(ref))), "spec": [str(e) for e in J.sharding.spec]}))
jax.distributed.shutdown()
'''


@pytest.mark.slow
def test_two_processes_over_loopback(tmp_path):
    """Several hosts, as far as one machine goes: two processes with one CPU device each,
    joined by jax.distributed.initialize over 127.0.0.1 (gloo collectives); jacrev's rows
    split between them, each process holding its half."""
    import socket

    script = tmp_path / "two.py"
    script.write_text(TWO_PROCESSES)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)
    procs = [subprocess.Popen([sys.executable, str(script), str(i), port], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    outs = []
    try:
        for p in procs:
            stdout, stderr = p.communicate(timeout=600)
            assert p.returncode == 0, stderr[-3000:]
            outs.append(json.loads(stdout.split("RESULT", 1)[1]))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for out in outs:
        assert out["local_shapes"] == [[4, 6]] and out["spec"] == ["data"], out
        assert out["rel"] <= 1e-6, out


@pytest.mark.slow
def test_ntk_example_equals_one_device():
    env = {**os.environ, "PYTHONPATH": ROOT, "XLA_FLAGS": fl.train.cpu_device_flags(4), "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "ntk_mesh.py"), "--train", "8",
                           "--test", "4", "--size", "12"], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "NTK (8, 4, 10, 10) over 4 devices" in proc.stdout
    assert float(proc.stdout.rsplit("= ", 1)[1].split()[0]) <= 1e-6
