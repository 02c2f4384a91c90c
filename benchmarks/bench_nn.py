"""nn layers: what reverse mode stores, gradient-step time, per-sample gradients.

- residuals: bytes of the distinct arrays held by the closure ``jax.vjp`` returns (its
  pytree leaves), our layer vs the same formula in plain ``jnp`` under autodiff. The
  ratio column is plain/ours (> 1: we store less); the issue's target is ours <= 0.55x
  plain, i.e. ratio >= 1.82.
- XLA temp bytes: what XLA plans for the whole jitted gradient step.
- step time: ``jax.jit(value_and_grad(loss))`` of a 4-block MLP (linear -> LayerNorm ->
  relu, width 512, batch 1024, then a linear head), ours vs plain jnp vs torch.func;
  also with ``nn.mlp(..., fused=True)`` (one rule per block, recomputes ``xW + b``).
- per-sample gradients: ``vmap(grad)`` of a 64-256-1 tanh MLP, batch 256, float32:
  ours vs raw JAX on plain jnp, vs the same gradients written by hand as einsums, vs
  ``torch.func.vmap(torch.func.grad)``.
- CNN per-sample gradients: torch.func's tutorial CNN (examples/per_sample_cnn.py), batch
  64: ours (``fl.nn.conv``/``max_pool``/``linear``) vs raw JAX ``vmap(grad)`` of the same
  model written with ``lax`` vs torch.func eager; ``vmap(chunk_size=16)`` in both loop
  forms of ``functorch_lite._chunking`` (unrolled, ``lax.map``) vs unchunked, with XLA's
  planned temp bytes.
- residuals per layer under ``jax.vjp`` (what ``jax.grad`` keeps) and ``fl.vjp``.

Timings are medians of interleaved runs (benchmarks/harness.py). torch.func is timed
twice, in separate interleaved runs against ours: with ``torch.set_num_threads(2)`` (this
machine's core count, as XLA uses) and with 1 thread, because on a loaded 2-core machine
torch's 2-thread OpenMP barriers can be many times slower than 1 thread (measured here:
120 ms vs 3 ms for the per-sample job), and switching the count between calls disturbs
both. The target is checked against the faster of the two.
"""

from __future__ import annotations


import jax
import jax.numpy as jnp
import numpy as np

import functorch_lite as fl
from functorch_lite import nn

from .harness import Row, compiled, interleaved, temp_bytes


# ------------------------------------------------------------------ plain-jnp formulas


def plain_linear(x, w, b):
    return x @ w + b.reshape((1,) * (x.ndim - 1) + b.shape)


def plain_layer_norm(x, scale, offset, eps=1e-5):
    mu = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean((x - mu) ** 2, axis=-1, keepdims=True)
    return (x - mu) / jnp.sqrt(var + eps) * scale + offset


def plain_rms_norm(x, scale, eps=1e-6):
    return x / jnp.sqrt(jnp.mean(x * x, axis=-1, keepdims=True) + eps) * scale


def plain_l2_norm(x):
    return jnp.sqrt(jnp.sum(x * x, axis=-1))


def plain_mlp(params, x, norm="layer", activation=jax.nn.relu):
    h = x
    for i, p in enumerate(params):
        h = plain_linear(h, p["w"], p["b"])
        if i < len(params) - 1:
            if norm == "layer":
                h = plain_layer_norm(h, p["scale"], p["offset"])
            h = activation(h)
    return h


def residual_bytes(f, *args) -> int:
    """Bytes of the distinct arrays the closure returned by ``jax.vjp`` keeps."""
    _, pullback = jax.vjp(f, *args)
    seen = {id(leaf): leaf for leaf in jax.tree_util.tree_leaves(pullback)}
    return sum(leaf.size * leaf.dtype.itemsize for leaf in seen.values())


def _bytes_row(job, ours, plain, target=""):
    return Row("nn", job, "B", float(ours), {"plain jnp": float(plain)}, target,
               note=f"ours/plain = {ours / plain:.3f}")


# ------------------------------------------------------------------------- the rows


def fl_residual_bytes(f, *args) -> int:
    """Bytes of the distinct arrays the closure returned by ``fl.vjp`` keeps."""
    _, pullback = fl.vjp(f, *args)
    seen = {id(leaf): leaf for leaf in jax.tree_util.tree_leaves(pullback)}
    return sum(leaf.size * leaf.dtype.itemsize for leaf in seen.values())


def plain_conv(x, w, b):
    y = jax.lax.conv_general_dilated(x, w, (1, 1), "VALID", dimension_numbers=("NCHW", "OIHW", "NCHW"))
    return y + b.reshape(1, -1, 1, 1)


def plain_max_pool(x):
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 1, 2, 2), (1, 1, 2, 2), "VALID")


def residual_rows(quick: bool) -> list[Row]:
    rows, n, d = [], (256 if quick else 1024), (128 if quick else 512)
    k = jax.random.split(jax.random.key(0), 4)
    x = jax.random.normal(k[0], (n, d))
    w = jax.random.normal(k[1], (d, d)) / np.sqrt(d)
    b, scale, offset = jnp.zeros(d), 1 + 0.1 * jax.random.normal(k[2], (d,)), jnp.zeros(d)
    cases = [
        ("layer_norm", lambda x, s, o: nn.layer_norm(x, s, o), plain_layer_norm, (x, scale, offset), "<= 0.55x"),
        ("rms_norm", nn.rms_norm, plain_rms_norm, (x, scale), "<= 0.55x"),
        ("linear", nn.linear, plain_linear, (x, w, b), ""),
        ("l2_norm (rows)", lambda x: nn.l2_norm(x, axis=-1), plain_l2_norm, (x,), ""),
    ]
    for name, ours, plain, args, target in cases:
        for how, measure in (("jax.vjp", residual_bytes), ("fl.vjp", fl_residual_bytes)):
            rows.append(_bytes_row(f"residuals {name} {n}x{d}, {how}", measure(ours, *args),
                                   measure(plain, *args), target))
    xc = jax.random.normal(k[3], (16, 32, 26, 26))
    wc, bc = jax.random.normal(k[1], (64, 32, 3, 3)) / 17, jnp.zeros(64)
    for name, ours, plain, args in (("conv 32->64 3x3, 16x32x26x26", nn.conv, plain_conv, (xc, wc, bc)),
                                    ("max_pool 2, 16x32x26x26", lambda x: nn.max_pool(x, 2), plain_max_pool, (xc,))):
        for how, measure in (("jax.vjp", residual_bytes), ("fl.vjp", fl_residual_bytes)):
            rows.append(_bytes_row(f"residuals {name}, {how}", measure(ours, *args),
                                   measure(plain, *args)))
    return rows


def _mlp_setup(quick: bool):
    width, batch = (128, 128) if quick else (512, 1024)
    model = nn.mlp([width] * 5 + [1], norm="layer")       # 4 blocks + a linear head
    fused = nn.mlp([width] * 5 + [1], norm="layer", fused=True)
    params = model.init(jax.random.key(1))
    x = jax.random.normal(jax.random.key(2), (batch, width))
    y = jax.random.normal(jax.random.key(3), (batch, 1))

    def loss_ours(p, x, y):
        return jnp.mean((model.apply(p, x) - y) ** 2)

    def loss_fused(p, x, y):
        return jnp.mean((fused.apply(p, x) - y) ** 2)

    def loss_plain(p, x, y):
        return jnp.mean((plain_mlp(p, x) - y) ** 2)

    return width, batch, params, x, y, loss_ours, loss_fused, loss_plain


def _torch_mlp_step(params, x, y):
    """``torch.func.grad`` of the same model, or None without torch."""
    try:
        import torch
        from torch.func import grad_and_value
    except ImportError:
        return None
    tp = [{k: torch.tensor(np.asarray(v)) for k, v in p.items()} for p in params]
    tx, ty = torch.tensor(np.asarray(x)), torch.tensor(np.asarray(y))
    F = torch.nn.functional

    def loss(p, x, y):
        h = x
        for i, q in enumerate(p):
            h = h @ q["w"] + q["b"]
            if i < len(p) - 1:
                h = F.relu(F.layer_norm(h, (h.shape[-1],), q["scale"], q["offset"], eps=1e-5))
        return ((h - y) ** 2).mean()

    step = grad_and_value(loss)
    return lambda: step(tp, tx, ty)


def mlp_rows(quick: bool) -> list[Row]:
    width, batch, params, x, y, loss_ours, loss_fused, loss_plain = _mlp_setup(quick)
    tag = f"4-block MLP w{width} b{batch} LN"
    plain_res = residual_bytes(loss_plain, params, x, y)
    rows = [_bytes_row(f"residuals whole {tag}", residual_bytes(loss_ours, params, x, y), plain_res),
            _bytes_row(f"residuals whole {tag}, fused blocks",
                       residual_bytes(loss_fused, params, x, y), plain_res)]
    steps = {k: compiled(jax.value_and_grad(f), params, x, y)
             for k, f in (("ours", loss_ours), ("ours fused", loss_fused), ("plain jnp", loss_plain))}
    for k in ("ours", "ours fused"):
        rows.append(Row("nn", f"XLA temp bytes, grad step {tag}" + (", fused" if "fused" in k else ""),
                        "B", float(temp_bytes(steps[k])), {"plain jnp": float(temp_bytes(steps["plain jnp"]))}))
    contenders = {k: (lambda c=c: c(params, x, y)) for k, c in steps.items()}
    reps = 11 if quick else 31
    times = interleaved(contenders, reps=reps)
    ours, fused = times.pop("ours"), times.pop("ours fused")
    rows.append(Row("nn", f"grad step time {tag}", "s", ours, times, "<= plain jnp",
                    note="ratio = peer/ours (> 1: ours faster)"))
    rows.append(Row("nn", f"grad step time {tag}, fused", "s", fused, {"plain jnp": times["plain jnp"]},
                    note="fused blocks recompute xW + b in the backward pass"))
    torch_step = _torch_mlp_step(params, x, y)
    if torch_step is not None:
        rows += _vs_torch(f"grad step time {tag}", contenders["ours"], torch_step,
                          reps if quick else 21, "", burst=1 if quick else 2)
    return rows


def _vs_torch(job, ours, torch_fn, reps, target, pause=0.005, burst=1, steady=None):
    """Ours vs a torch.func callable: one interleaved run per torch thread count, one row
    each (ours is re-measured in each run: torch's threads slow down what runs near it).

    ``steady=(reps, burst, settle)`` adds a steady-state run per thread count: no pause,
    ``burst`` calls per turn, all but the first ``settle`` timed (harness.interleaved)."""
    import torch

    rows = []
    for threads in (2, 1):
        torch.set_num_threads(threads)
        t = interleaved({"ours": ours, "torch": torch_fn}, reps=reps, pause=pause, burst=burst)
        rows.append(Row("nn", f"{job} vs torch.func, torch threads={threads}", "s", t["ours"],
                        {"torch.func": t["torch"]}, target,
                        note=f"ratio = torch/ours (> 1: ours faster); {pause * 1e3:g} ms pause, "
                             f"then last of {burst} calls per turn"))
        if steady is not None:
            s_reps, s_burst, s_settle = steady
            t = interleaved({"ours": ours, "torch": torch_fn}, reps=s_reps, burst=s_burst, settle=s_settle)
            rows.append(Row("nn", f"{job} vs torch.func, torch threads={threads}, steady state", "s",
                            t["ours"], {"torch.func": t["torch"]}, target,
                            note=f"ratio = torch/ours; no pause, {s_burst} calls per turn, all but "
                                 f"the first {s_settle} timed"))
    torch.set_num_threads(2)
    return rows


def per_sample_setup(quick: bool):
    """The per-sample job: (params, x, y, ours, raw JAX, by hand), the three jitted."""
    batch, d_in, hidden = (64, 64, 256) if quick else (256, 64, 256)
    model = nn.mlp([d_in, hidden, 1], activation=jnp.tanh)
    params = model.init(jax.random.key(4))
    x = jax.random.normal(jax.random.key(5), (batch, d_in))
    y = jax.random.normal(jax.random.key(6), (batch, 1))

    def loss_ours(p, x, y):
        return jnp.sum((model.apply(p, x) - y) ** 2)

    def loss_plain(p, x, y):
        return jnp.sum((plain_mlp(p, x, norm=None, activation=jnp.tanh) - y) ** 2)

    def by_hand(p, x, y):   # the per-sample gradients as einsums over the batch
        (p1, p2) = p
        h = jnp.tanh(x @ p1["w"] + p1["b"][None])
        g = 2 * (h @ p2["w"] + p2["b"][None] - y)
        dz = (g @ p2["w"].T) * (1 - h * h)
        return [{"b": dz, "w": jnp.einsum("bi,bj->bij", x, dz)},
                {"b": g, "w": jnp.einsum("bi,bj->bij", h, g)}]

    ours = jax.jit(fl.vmap(fl.grad(loss_ours), in_dims=(None, 0, 0)))
    plain = jax.jit(jax.vmap(jax.grad(loss_plain), in_axes=(None, 0, 0)))
    return params, x, y, ours, plain, jax.jit(by_hand)


def per_sample_rows(quick: bool) -> list[Row]:
    params, x, y, ours, plain, hand = per_sample_setup(quick)
    (batch, d_in), hidden = x.shape, params[0]["w"].shape[1]
    want = hand(params, x, y)
    for f in (ours, plain):
        for a, b in zip(jax.tree_util.tree_leaves(f(params, x, y)), jax.tree_util.tree_leaves(want)):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    contenders = {"ours": lambda: ours(params, x, y), "raw JAX": lambda: plain(params, x, y),
                  "hand einsum": lambda: hand(params, x, y)}
    reps = 21 if quick else 101
    times = interleaved(contenders, reps=reps, pause=0.005, burst=1 if quick else 3)
    t_ours = times.pop("ours")
    job = f"per-sample grads vmap(grad) {d_in}-{hidden}-1 b{batch}"
    rows = [Row("nn", job, "s", t_ours, times, "= hand einsum",
                note="ratio = peer/ours (> 1: ours faster); 5 ms pause before each turn")]
    times = interleaved(contenders, reps=7 if quick else 21, burst=20 if quick else 40, settle=12 if quick else 15)
    t_ours = times.pop("ours")
    rows.append(Row("nn", f"{job}, steady state", "s", t_ours, times, "= hand einsum",
                    note="ratio = peer/ours; no pause, all but the first calls of each turn timed"))
    try:
        import torch
        from torch.func import grad as tgrad, vmap as tvmap
    except ImportError:
        return rows
    tp = [{k: torch.tensor(np.asarray(v)) for k, v in q.items()} for q in params]
    tx, ty = torch.tensor(np.asarray(x)), torch.tensor(np.asarray(y))

    def tloss(p, x, y):
        h = torch.tanh(x @ p[0]["w"] + p[0]["b"])
        return ((h @ p[1]["w"] + p[1]["b"] - y) ** 2).sum()

    tfn = tvmap(tgrad(tloss), in_dims=(None, 0, 0))
    got = tfn(tp, tx, ty)
    np.testing.assert_allclose(got[0]["w"].numpy(), want[0]["w"], rtol=1e-4, atol=1e-5)
    rows += _vs_torch(job, contenders["ours"], lambda: tfn(tp, tx, ty), reps if quick else 61,
                      ">= 2x", burst=1 if quick else 5, steady=(7, 20, 12) if quick else (21, 40, 15))
    return rows


def _torch_cnn(params):
    """torch.func's tutorial: ``vmap(grad(compute_loss))`` of the same CNN and weights."""
    import torch
    import torch.nn.functional as F
    from torch.func import grad as tgrad, vmap as tvmap

    tp = {k: {kk: torch.tensor(np.asarray(v)) for kk, v in p.items()} for k, p in params.items()}

    def model(p, x):
        h = F.relu(F.conv2d(x, p["conv1"]["w"], p["conv1"]["b"]))
        h = F.relu(F.conv2d(h, p["conv2"]["w"], p["conv2"]["b"]))
        h = torch.flatten(F.max_pool2d(h, 2), 1)
        h = F.relu(h @ p["fc1"]["w"] + p["fc1"]["b"])
        return F.log_softmax(h @ p["fc2"]["w"] + p["fc2"]["b"], dim=1)

    def loss(p, sample, target):
        return F.nll_loss(model(p, sample.unsqueeze(0)), target.unsqueeze(0))

    return tp, tvmap(tgrad(loss), in_dims=(None, 0, 0))


def cnn_rows(quick: bool) -> list[Row]:
    from examples import per_sample_cnn as ex
    from functorch_lite import _chunking

    batch = 16 if quick else 64
    params = ex.init(jax.random.key(0))
    xs, ys = ex.data(jax.random.key(1), batch)
    n_param_leaves = len(jax.tree_util.tree_leaves(params))
    g = fl.grad(ex.loss)

    def chunked(form):
        return lambda p, x, y: _chunking.chunked_vmap(g, (p, x, y), [None] * n_param_leaves + [0, 0],
                                                      0, 16 if not quick else 4, "bench", form=form)

    raw = jax.vmap(jax.grad(lambda p, x, y: ex.loss(p, x, y, forward=ex.lax_model)), in_axes=(None, 0, 0))
    progs = {"ours": ex.per_sample_grads, "raw JAX lax": raw,
             "chunked unrolled": chunked("unrolled"), "chunked lax.map": chunked("map")}
    comp = {k: compiled(f, params, xs, ys) for k, f in progs.items()}
    want = comp["raw JAX lax"](params, xs, ys)
    for k in ("ours", "chunked unrolled", "chunked lax.map"):
        for a, b in zip(jax.tree_util.tree_leaves(comp[k](params, xs, ys)), jax.tree_util.tree_leaves(want)):
            np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5)
    calls = {k: (lambda c=c: c(params, xs, ys)) for k, c in comp.items()}
    reps = 7 if quick else 21
    times = interleaved(calls, reps=reps)
    job = f"CNN per-sample grads (torch.func tutorial) b{batch}"
    rows = [Row("nn", job, "s", times["ours"], {"raw JAX lax": times["raw JAX lax"]}, ">= 2x raw JAX",
                note="ratio = peer/ours (> 1: ours faster)")]
    chunk = 4 if quick else 16
    for form in ("unrolled", "lax.map"):
        k = f"chunked {form}"
        rows.append(Row("nn", f"{job}, vmap(chunk_size={chunk}) {form} vs unchunked", "s", times[k],
                        {"unchunked": times["ours"]}, "<= 1.3x unchunked" if form == "unrolled" else "",
                        note=f"ratio = unchunked/chunked (>= 0.77 meets 1.3x); temp "
                             f"{temp_bytes(comp[k]) / 2**20:.1f} MiB chunked vs "
                             f"{temp_bytes(comp['ours']) / 2**20:.1f} MiB unchunked"))
    for k in ("ours", "raw JAX lax", "chunked unrolled", "chunked lax.map"):
        rows.append(Row("nn", f"XLA temp bytes, {job}, {k}", "B", float(temp_bytes(comp[k]))))
    try:
        import torch
    except ImportError:
        return rows
    tp, tfn = _torch_cnn(params)
    tx, ty = torch.tensor(np.asarray(xs)), torch.tensor(np.asarray(ys)).long()
    got = tfn(tp, tx, ty)
    np.testing.assert_allclose(got["conv2"]["w"].numpy(), want["conv2"]["w"], rtol=1e-3, atol=1e-5)
    rows += _vs_torch(job, calls["ours"], lambda: tfn(tp, tx, ty), 7 if quick else 15, ">= 1x (aim 2x)")
    return rows


def run(quick: bool = False) -> list[Row]:
    return residual_rows(quick) + cnn_rows(quick) + mlp_rows(quick) + per_sample_rows(quick)
