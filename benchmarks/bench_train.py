"""functorch_lite.train.fit against the loops a user would otherwise write.

1. ``fit`` vs a hand-written ``jax.jit`` + optax loop on the same MLP and data pipeline
   (per-epoch shuffled mini-batches gathered on the device, Adam, donated buffers):
   time per step (ratio = peer/ours, > 1: fit is faster). Target: fit within 3%
   (ratio >= 0.97).
2. ``steps_per_call=16`` vs one step per dispatch on a tiny model, where the Python
   dispatch dominates: target >= 2x.
3. The same MLP and optimizer in a plain PyTorch eager loop (when torch is installed):
   the ratio is reported, no target.

Every contender is compiled/warmed before timing (fit caches its compiled program on the
loss function and optimizer object, so a warm ``fit`` call does no compilation); one
timed call runs ``steps`` optimizer steps and ends when the parameters are ready. The
figure is the median over interleaved repetitions (A B A B ...).

    python -m benchmarks --only train [--quick]
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from functorch_lite import train

from .harness import Row, interleaved


def _mlp_init(key, sizes):
    keys = jax.random.split(key, len(sizes) - 1)
    return [{"W": jax.random.normal(k, (m, n)) * np.sqrt(2.0 / m), "b": jnp.zeros(n)}
            for k, m, n in zip(keys, sizes[:-1], sizes[1:])]


def _mlp_apply(params, x):
    for layer in params[:-1]:
        x = jax.nn.relu(x @ layer["W"] + layer["b"][None, :])
    return x @ params[-1]["W"] + params[-1]["b"][None, :]


def _loss(params, batch):
    x, labels = batch
    return optax.softmax_cross_entropy_with_integer_labels(_mlp_apply(params, x), labels).mean()


def _data(n, d_in, classes, seed=0):
    rng = np.random.RandomState(seed)
    return rng.randn(n, d_in).astype(np.float32), rng.randint(0, classes, n).astype(np.int32)


def _handwritten(params, optimizer, x, y, steps, batch_size):
    """The loop a JAX user writes: one jitted, donated step; a host permutation per epoch."""
    xd, yd = jnp.asarray(x), jnp.asarray(y)

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(params, opt_state, idx):
        loss, g = jax.value_and_grad(_loss)(params, (xd[idx], yd[idx]))
        updates, opt_state = optimizer.update(g, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    n = len(x)
    per_epoch = n // batch_size
    rng = np.random.RandomState(0)

    def run():
        p = jax.tree.map(jnp.copy, params)
        s = optimizer.init(p)
        losses = []
        for t in range(steps):
            if t % per_epoch == 0:
                perm = rng.permutation(n)
            j = t % per_epoch
            p, s, loss = step(p, s, perm[j * batch_size:(j + 1) * batch_size])
            losses.append(loss)
        return p

    return run


def _torch_loop(sizes, x, y, steps, batch_size, lr):
    import torch

    layers = []
    for i, (m, n) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(torch.nn.Linear(m, n))
        if i < len(sizes) - 2:
            layers.append(torch.nn.ReLU())
    model = torch.nn.Sequential(*layers)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y).long()
    loss_fn = torch.nn.CrossEntropyLoss()
    n, per_epoch = len(x), len(x) // batch_size
    gen = torch.Generator().manual_seed(0)

    def run():
        for t in range(steps):
            if t % per_epoch == 0:
                perm = torch.randperm(n, generator=gen)
            idx = perm[(t % per_epoch) * batch_size:(t % per_epoch + 1) * batch_size]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(xt[idx]), yt[idx])
            loss.backward()
            opt.step()
        return None

    return run


def run(quick: bool = False) -> list[Row]:
    rows = []
    reps = 5 if quick else 15
    # 1. fit vs hand-written jax.jit + optax, same MLP
    sizes = (256, 128, 128, 10) if quick else (784, 256, 256, 10)
    steps, batch_size, lr = (150 if quick else 500), 128, 1e-3
    x, y = _data(4096, sizes[0], sizes[-1])
    data = (jnp.asarray(x), jnp.asarray(y))  # on the device once, as in the hand-written loop
    params = _mlp_init(jax.random.key(0), sizes)
    optimizer = optax.adam(lr)

    def ours():
        return train.fit(_loss, params, optimizer, data, steps=steps, batch_size=batch_size,
                         progress=False).params

    def ours_bar():
        import io
        import contextlib

        with contextlib.redirect_stderr(io.StringIO()):  # tqdm writes to stderr
            return train.fit(_loss, params, optimizer, data, steps=steps, batch_size=batch_size,
                             progress=True).params

    contenders = {"fit": ours, "fit+bar": ours_bar, "jit+optax": _handwritten(params, optimizer, x, y, steps, batch_size)}
    t = interleaved(contenders, reps=max(9, reps))   # shuffled order each round
    torch_note = ""
    try:
        import torch

        # Timed on its own, after the JAX contenders (torch's OpenMP threads keep spinning
        # after each call and would slow whichever contender ran next), with the thread
        # count that is fastest here: on this loaded 2-core machine torch's default
        # (2 spinning OpenMP threads) measured ~10x slower than 1 thread.
        torch_steps = max(20, steps // 5)
        default_threads = torch.get_num_threads()
        by_threads = {}
        for threads in sorted({1, default_threads}):
            torch.set_num_threads(threads)
            by_threads[threads] = interleaved(
                {"torch": _torch_loop(sizes, x, y, torch_steps, batch_size, lr)},
                reps=3 if threads != 1 else max(3, reps // 3), warmup=1)["torch"] / torch_steps
        torch.set_num_threads(default_threads)
        best = min(by_threads, key=by_threads.get)
        t["torch eager"] = by_threads[best] * steps
        torch_note = (f"torch {torch.__version__}, best of threads " +
                      ", ".join(f"{k}: {v * 1e3:.2f}ms/step" for k, v in by_threads.items()))
    except ImportError:
        pass
    per = {k: v / steps for k, v in t.items()}  # seconds per optimizer step
    mlp = "x".join(map(str, sizes))
    rows.append(Row("train", f"fit vs jit+optax loop, MLP {mlp}, B={batch_size}", "s", per["fit"],
                    {"jit+optax": per["jit+optax"]}, target="ratio >= 0.97",
                    note=f"time per step; steps/s fit {1 / per['fit']:.0f}, jit+optax {1 / per['jit+optax']:.0f}"))
    rows.append(Row("train", "fit with its tqdm bar vs jit+optax loop", "s", per["fit+bar"],
                    {"jit+optax": per["jit+optax"]}, note="progress=True, output discarded"))
    one = interleaved({"fit, 1 step": lambda: train.fit(_loss, params, optimizer, data, steps=1, batch_size=batch_size,
                                                           progress=False).params}, reps=reps, warmup=1)
    rows.append(Row("train", "fit's fixed cost per call (steps=1, compiled)", "s", one["fit, 1 step"] - per["fit"],
                    note="copies of params/opt_state, optimizer.init, checks, first permutation; "
                         "amortised over a run's steps"))
    if "torch eager" in per:
        rows.append(Row("train", "fit vs PyTorch eager loop, same MLP and Adam", "s", per["fit"],
                        {"torch eager": per["torch eager"]}, note=torch_note))

    # 2. steps_per_call=16 vs 1 on a tiny model (dispatch-bound)
    tiny = (4, 16, 2)
    tiny_data = tuple(map(jnp.asarray, _data(1024, tiny[0], tiny[-1], seed=1)))
    tiny_params = _mlp_init(jax.random.key(1), tiny)
    tiny_opt = optax.adam(1e-3)
    tiny_steps = 800 if quick else 3200

    def spc(s):
        return lambda: train.fit(_loss, tiny_params, tiny_opt, tiny_data, steps=tiny_steps, batch_size=32,
                                 steps_per_call=s, progress=False).params

    t = interleaved({"spc16": spc(16), "spc1": spc(1)}, reps=max(6, reps))
    rows.append(Row("train", f"steps_per_call=16 vs 1, tiny MLP {'x'.join(map(str, tiny))}", "s",
                    t["spc16"] / tiny_steps, {"steps_per_call=1": t["spc1"] / tiny_steps}, target="ratio >= 2",
                    note=f"time per step; steps/s {tiny_steps / t['spc16']:.0f} vs {tiny_steps / t['spc1']:.0f}"))
    return rows
