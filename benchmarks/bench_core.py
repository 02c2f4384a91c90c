"""Core transforms against raw JAX: same FLOPs (XLA cost analysis), time ratio under jit;
and jacrev(chunk_size=c): planned temp memory and time against c.

`python -m benchmarks --only core [--quick]`
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

import functorch_lite as fl

from .harness import Row, compiled, flops, hlo_ops, interleaved, temp_bytes


def _mlp(n_in: int, width: int, n_out: int, seed: int = 0):
    k1, k2 = jax.random.split(jax.random.key(seed))
    W1 = jax.random.normal(k1, (width, n_in)) / jnp.sqrt(n_in)
    W2 = jax.random.normal(k2, (n_out, width)) / jnp.sqrt(width)
    return lambda x: W2 @ jnp.tanh(W1 @ x)


def transform_pairs(n: int):
    """(job, ours, raw JAX, args): each transform and its raw JAX counterpart."""
    f = _mlp(n, 4 * n, n)
    loss = lambda x: jnp.sum(f(x) ** 2)
    x = jnp.linspace(-1.0, 1.0, n)
    xs = jnp.stack([x * (1 + 0.1 * i) for i in range(32)])
    u = jnp.ones(n)
    return [
        ("grad", fl.grad(loss), jax.grad(loss), (x,)),
        ("grad_and_value", fl.grad_and_value(loss), jax.value_and_grad(loss), (x,)),
        ("vjp + apply", lambda x: fl.vjp(f, x)[1](x), lambda x: jax.vjp(f, x)[1](x), (x,)),
        ("jvp", lambda x: fl.jvp(f, (x,), (u,)), lambda x: jax.jvp(f, (x,), (u,)), (x,)),
        ("linearize + apply", lambda x: fl.linearize(f, x)[1](u), lambda x: jax.linearize(f, x)[1](u), (x,)),
        ("jacrev", fl.jacrev(f), jax.jacrev(f), (x,)),
        ("jacfwd", fl.jacfwd(f), jax.jacfwd(f), (x,)),
        ("hessian", fl.hessian(loss), jax.hessian(loss), (x,)),
        ("vmap(grad)", fl.vmap(fl.grad(loss)), jax.vmap(jax.grad(loss)), (xs,)),
    ]


def run(quick: bool = False) -> list[Row]:
    rows = []
    reps = 7 if quick else None          # None: as many rounds as ~0.5 s allows
    # Separately compiled copies of one program differ by up to ~6% here (measured on the
    # hessian: 772-823 us for three copies of ours, 775-787 us for raw JAX's), so time
    # three copies of each and pool their samples.
    instances = 1 if quick else 3
    for job, ours, theirs, args in transform_pairs(32 if quick else 128):
        c_ours, c_jax = compiled(ours, *args), compiled(theirs, *args)
        copies = lambda f: [lambda c=compiled(f, *args): c(*args) for _ in range(instances)]
        t = interleaved({"ours": copies(ours), "jax": copies(theirs)}, reps=reps)
        fo, fj = flops(c_ours), flops(c_jax)
        rows.append(Row("core", f"{job}: time", "s", t["ours"], {"jax": t["jax"]}, target="ratio >= 0.97 (ours within 1.03x)"))
        same = hlo_ops(c_ours) == hlo_ops(c_jax)
        rows.append(Row("core", f"{job}: FLOPs", "", fo, {"jax": fj}, target="ratio == 1.00",
                        note=f"optimized HLO instructions identical to raw JAX: {'yes' if same else 'NO'}"))

    rows.extend(_peer_rows(32 if quick else 128, reps))

    # jacrev chunking: R^n -> R^n through a wide hidden layer
    n, width = (256, 4096) if quick else (512, 8192)
    f = _mlp(n, width, n)
    x = jnp.ones(n)
    full = compiled(fl.jacrev(f), x)
    full_bytes = temp_bytes(full)
    for c in (8, 16, 32, 64, 128):
        ch = compiled(fl.jacrev(f, chunk_size=c), x)
        t = interleaved({"chunk": lambda: ch(x), "full": lambda: full(x)}, reps=5 if quick else 21)
        target = "temp <= 0.15 x full, time <= 1.3x full" if c == 32 else ""
        rows.append(Row("core", f"jacrev R^{n}->R^{n} (width {width}) chunk={c}: temp", "B",
                        float(temp_bytes(ch)), {"unchunked": float(full_bytes)}, target=target,
                        note=f"temp = {temp_bytes(ch) / full_bytes:.3f} x unchunked"))
        rows.append(Row("core", f"jacrev chunk={c}: time", "s", t["chunk"], {"unchunked": t["full"]},
                        note=f"time = {t['chunk'] / t['full']:.2f} x unchunked"))
    rows.extend(_thin_dot_rows(n, width, reps=5 if quick else 21))
    return rows


def _thin_dot_rows(n: int, width: int, reps: int) -> list[Row]:
    """Why small chunks cost time: each chunk's backward pass multiplies a thin (c x n)
    cotangent by a whole (n x width) weight. Times XLA's dot for several c against its
    c/n share of the full (n x n) @ (n x width) product, and against one plain read of the
    weight (a row-max), which is what the weight's memory traffic alone would cost."""
    W = jax.random.normal(jax.random.key(3), (n, width))
    dot = jax.jit(lambda a, w: a @ w)
    read = jax.jit(lambda w: jnp.max(w, axis=1))
    cs = sorted({8, 32, n})
    lhs = {c: jnp.ones((c, n)) for c in cs}
    contenders = {c: (lambda a=lhs[c]: dot(a, W)) for c in cs}
    contenders["read"] = lambda: read(W)
    t = interleaved(contenders, reps=reps)
    mib = W.size * W.dtype.itemsize / 2**20
    rows = [Row("core", f"read the ({n} x {width}) weight once ({mib:.0f} MiB)", "s", t["read"],
                note=f"{mib / 1024 / t['read']:.1f} GiB/s; what re-reading the weight per chunk costs")]
    per_row = t[n] / n
    for c in cs[:-1]:
        fixed = t[c] - c * per_row
        rows.append(Row("core", f"dot ({c} x {n}) @ ({n} x {width})", "s", t[c],
                        {f"{c}/{n} of the full product": c * per_row},
                        note=f"fixed cost per call ~{fixed * 1e3:.2f} ms = {fixed / t['read']:.1f}x one read "
                             f"of the weight (a kernel that packs the weight on every call would show this)"))
    return rows


def _peer_rows(n: int, reps: int | None) -> list[Row]:
    """grad / jacrev / hessian of the same MLP under torch.func and HIPS autograd (eager,
    float32 weights), where installed, against our jitted transforms."""
    import numpy as np

    k1, k2 = jax.random.split(jax.random.key(0))
    W1 = np.asarray(jax.random.normal(k1, (4 * n, n)) / np.sqrt(n), np.float32)
    W2 = np.asarray(jax.random.normal(k2, (n, 4 * n)) / np.sqrt(4 * n), np.float32)
    x = np.linspace(-1.0, 1.0, n).astype(np.float32)
    f = lambda x: jnp.asarray(W2) @ jnp.tanh(jnp.asarray(W1) @ x)
    loss = lambda x: jnp.sum(f(x) ** 2)
    ours = {"grad": fl.grad(loss), "jacrev": fl.jacrev(f), "hessian": fl.hessian(loss)}
    peers: dict[str, dict[str, object]] = {job: {} for job in ours}
    try:
        import torch
        from torch import func as tf

        tW1, tW2, tx = (torch.tensor(a) for a in (W1, W2, x))
        tfun = lambda x: tW2 @ torch.tanh(tW1 @ x)
        tloss = lambda x: torch.sum(tfun(x) ** 2)
        peers["grad"]["torch.func"] = lambda: tf.grad(tloss)(tx)
        peers["jacrev"]["torch.func"] = lambda: tf.jacrev(tfun)(tx)
        peers["hessian"]["torch.func"] = lambda: tf.hessian(tloss)(tx)
    except ImportError:
        pass
    try:
        import autograd
        import autograd.numpy as anp

        afun = lambda x: W2 @ anp.tanh(W1 @ x)
        aloss = lambda x: anp.sum(afun(x) ** 2)
        peers["grad"]["autograd"] = lambda g=autograd.grad(aloss): g(x)
        peers["jacrev"]["autograd"] = lambda g=autograd.jacobian(afun): g(x)
        peers["hessian"]["autograd"] = lambda g=autograd.hessian(aloss): g(x)
    except ImportError:
        pass
    rows = []
    xj = jnp.asarray(x)
    for job, fn in ours.items():
        if not peers[job]:
            continue
        c = compiled(fn, xj)
        t = interleaved({"ours": lambda: c(xj), **peers[job]}, reps=reps)
        rows.append(Row("core", f"{job} R^{n}->R^{4 * n}->R^{n} vs eager peers", "s", t.pop("ours"), t,
                        note="peers run eagerly (their normal use); torch at its default thread count"))
    return rows
