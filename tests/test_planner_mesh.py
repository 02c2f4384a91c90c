"""The planner knows the device count of a mesh (issue 17): pure-mode costs per device,
``ceil(passes / devices)``, and ``explain()`` shows the split. Four simulated CPU
devices, in a subprocess (the device count is fixed when JAX starts)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import math
    import jax, jax.numpy as jnp, numpy as np
    jax.config.update("jax_enable_x64", True)
    import functorch_lite as fl
    from functorch_lite._planner import api, model

    assert jax.device_count() == 4, jax.device_count()
    mesh = jax.make_mesh((4,), ("data",))
    A = jax.random.normal(jax.random.key(0), (10, 6), jnp.float64)
    f = lambda x: jnp.tanh(A @ x)
    x = jnp.linspace(-1.0, 1.0, 6)

    one, _ = api.plan_jacobian(f, (x,), {}, 0)
    four, _ = api.plan_jacobian(f, (x,), {}, 0, devices=4)
    assert one.devices == 1 and four.devices == 4 and one is not four
    info = api.trace(f, (x,), {}, 0, False, "t").info
    P, T = sum(info.flops), sum(info.tangent)
    # ceil(6 / 4) = 2 JVPs and ceil(10 / 4) = 3 VJPs per device (no layout/store terms
    # at this size)
    assert four.costs["fwd"] == 2 * T + P and four.costs["rev"] == 3 * T + P, four.costs
    assert one.costs["fwd"] == 6 * T + P and one.costs["rev"] == 10 * T + P, one.costs
    assert four.kind == "fwd" and four.split == "6 JVP passes over 4 devices: 2 per device"

    got = fl.jacobian(f, mesh=mesh)(x)
    np.testing.assert_allclose(np.asarray(got), np.asarray(jax.jacrev(f)(x)), rtol=1e-12)

    text = str(fl.explain(f, x, mesh=mesh, xla=False))
    assert "note: 6 JVP passes over 4 devices: 2 per device" in text, text
    assert "mesh= splits the pure modes over 4 devices" in text, text

    # a wide function: reverse, 9 VJPs over 4 devices -> 3 per device
    W = jax.random.normal(jax.random.key(1), (9, 40), jnp.float64)
    g = lambda x: jnp.sin(W @ x)
    r = fl.explain(g, jnp.ones(40), mesh=mesh, xla=False)
    assert r.chosen == "rev" and "9 VJP passes over 4 devices: 3 per device" in str(r)
    np.testing.assert_allclose(np.asarray(fl.jacobian(g, mesh=mesh)(jnp.ones(40))),
                               np.asarray(jax.jacfwd(g)(jnp.ones(40))), rtol=1e-12)
    print("ok")
""")


def test_planner_prices_passes_per_device_and_explain_shows_the_split():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
               JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = os.pathsep.join([os.getcwd(), env.get("PYTHONPATH", "")])
    p = subprocess.run([sys.executable, "-W", "error", "-c", SCRIPT], env=env,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0 and p.stdout.strip().endswith("ok"), p.stdout + p.stderr
