"""functorch_lite.train: train_step and fit on one device (numerics, accumulation,
chunked dispatch, batches, history, progress bar, plot)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import assert_tree_allclose
from functorch_lite import train

OPTAX_ADAM = "optax.adam's bias correction takes a Python float to an int32 power (optax's code, not strict-clean)"


def mlp_init(key, sizes=(3, 8, 1)):
    params = []
    for k, (m, n) in zip(jax.random.split(key, len(sizes) - 1), zip(sizes[:-1], sizes[1:])):
        params.append({"W": jax.random.normal(k, (m, n)) / np.sqrt(m), "b": jnp.zeros(n)})
    return params


def mlp_apply(params, x):
    for layer in params[:-1]:
        x = jnp.tanh(x @ layer["W"] + layer["b"][None, :])
    return x @ params[-1]["W"] + params[-1]["b"][None, :]


def mse(params, batch):
    x, y = batch
    return jnp.mean((mlp_apply(params, x)[:, 0] - y) ** 2)


@pytest.fixture
def data():
    rng = np.random.RandomState(0)
    x = rng.randn(96, 3).astype(np.float32)
    y = np.sin(x @ np.array([1.0, -2.0, 0.5], np.float32)).astype(np.float32)
    return x, y


def params0():
    return mlp_init(jax.random.key(1))


@pytest.mark.standard_promotion(OPTAX_ADAM)
def test_train_step_matches_handwritten_jax_optax(data):
    opt = optax.adam(1e-2)
    batch = (jnp.asarray(data[0][:32]), jnp.asarray(data[1][:32]))

    @jax.jit
    def reference(params, opt_state, batch):
        loss, g = jax.value_and_grad(mse)(params, batch)
        updates, opt_state = opt.update(g, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    p_ref, s_ref = params0(), opt.init(params0())
    p, s = params0(), opt.init(params0())
    step = train.train_step(mse, opt)
    for _ in range(3):
        p_ref, s_ref, loss_ref = reference(p_ref, s_ref, batch)
        p, s, metrics = step(p, s, batch)
        np.testing.assert_allclose(metrics["loss"], loss_ref, rtol=1e-6)
    assert_tree_allclose(p, p_ref, rtol=1e-6, atol=1e-7)
    g = jax.grad(mse)(p, batch)
    np.testing.assert_allclose(step(p, s, batch)[2]["grad_norm"],
                               np.sqrt(sum(float(jnp.sum(x ** 2)) for x in jax.tree.leaves(g))), rtol=1e-5)


def test_train_step_donates_params_and_opt_state(data):
    opt = optax.sgd(0.1)
    p = params0()
    s = opt.init(p)
    batch = (jnp.asarray(data[0][:8]), jnp.asarray(data[1][:8]))
    new_p, _, _ = train.train_step(mse, opt)(p, s, batch)
    assert all(x.is_deleted() for x in jax.tree.leaves(p))
    assert not any(x.is_deleted() for x in jax.tree.leaves(new_p))


def test_train_step_has_aux(data):
    def loss_aux(params, batch):
        err = mlp_apply(params, batch[0])[:, 0] - batch[1]
        return jnp.mean(err ** 2), {"mae": jnp.mean(jnp.abs(err))}

    opt = optax.sgd(0.1)
    p = params0()
    batch = (jnp.asarray(data[0][:8]), jnp.asarray(data[1][:8]))
    expected = loss_aux(p, batch)[1]["mae"]
    _, _, metrics = train.train_step(loss_aux, opt, has_aux=True)(p, opt.init(p), batch)
    np.testing.assert_allclose(metrics["aux"]["mae"], expected, rtol=1e-6)


@pytest.mark.parametrize("accumulate", [2, 4])
@pytest.mark.standard_promotion(OPTAX_ADAM)
def test_accumulation_equals_one_large_batch(data, accumulate):
    """Mean loss: averaging the gradients of k micro-batches = the gradient of the batch."""
    opt = optax.sgd(0.3)
    batch = (jnp.asarray(data[0][:32]), jnp.asarray(data[1][:32]))
    p1, p2 = params0(), params0()
    s1, s2 = opt.init(p1), opt.init(p2)
    one = train.train_step(mse, opt)
    acc = train.train_step(mse, opt, accumulate=accumulate)
    for _ in range(3):
        p1, s1, m1 = one(p1, s1, batch)
        p2, s2, m2 = acc(p2, s2, batch)
        np.testing.assert_allclose(m2["loss"], m1["loss"], rtol=1e-6)
    assert_tree_allclose(p2, p1, rtol=1e-5, atol=1e-6)
    # and through fit, over many steps with drawn batches
    r1 = train.fit(mse, params0(), optax.adam(1e-2), data, steps=12, batch_size=32, progress=False)
    r2 = train.fit(mse, params0(), optax.adam(1e-2), data, steps=12, batch_size=32,
                   accumulate=accumulate, progress=False)
    assert_tree_allclose(r2.params, r1.params, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(r2.history["loss"], r1.history["loss"], rtol=1e-5)


def test_accumulation_is_not_a_no_op(data):
    """A non-mean loss (sum over the batch) differs: accumulation averages the micro-batch
    gradients, so it is 1/k of the full-batch sum gradient. The check can fail."""
    opt = optax.sgd(0.01)
    sse = lambda p, b: jnp.sum((mlp_apply(p, b[0])[:, 0] - b[1]) ** 2)  # noqa: E731
    batch = (jnp.asarray(data[0][:32]), jnp.asarray(data[1][:32]))
    p, s = params0(), opt.init(params0())
    _, _, m1 = train.train_step(sse, opt)(p, s, batch)
    p, s = params0(), opt.init(params0())
    _, _, m4 = train.train_step(sse, opt, accumulate=4)(p, s, batch)
    np.testing.assert_allclose(4 * m4["grad_norm"], m1["grad_norm"], rtol=1e-5)


def test_fit_linear_regression_matches_least_squares():
    """The seed's z = ||Xw - y||^2, full batch: w converges to the least-squares solution."""
    rng = np.random.RandomState(3)
    X = rng.randn(64, 3).astype(np.float32)
    y = (X @ np.array([1.5, -2.0, 0.5]) + 0.1 * rng.randn(64)).astype(np.float32)
    lipschitz = 2 * np.linalg.eigvalsh(X.T.astype(np.float64) @ X).max()
    loss = lambda w, b: jnp.sum((b[0] @ w - b[1]) ** 2)  # noqa: E731
    result = train.fit(loss, jnp.zeros(3), optax.sgd(1.0 / lipschitz), (X, y), steps=300, progress=False)
    w_star = np.linalg.lstsq(X.astype(np.float64), y.astype(np.float64), rcond=None)[0]
    np.testing.assert_allclose(result.params, w_star, rtol=1e-4, atol=1e-5)
    assert result.step == 300 and result.history["loss"].shape == (300,)
    np.testing.assert_array_equal(result.history["step"], np.arange(300))


@pytest.mark.parametrize("spc", [4, 5])
@pytest.mark.standard_promotion(OPTAX_ADAM)
def test_steps_per_call_same_training(data, spc):
    r1 = train.fit(mse, params0(), optax.adam(1e-2), data, steps=22, batch_size=16, progress=False)
    rs = train.fit(mse, params0(), optax.adam(1e-2), data, steps=22, batch_size=16,
                   steps_per_call=spc, progress=False)
    assert rs.step == 22
    np.testing.assert_allclose(rs.history["loss"], r1.history["loss"], rtol=1e-5)
    assert_tree_allclose(rs.params, r1.params, rtol=1e-5, atol=1e-6)


def test_batches_are_epochs_drawn_from_key(data):
    """Step t sees rows perm_e[(t mod E) B : ...] with perm_e = permutation(fold_in(key, e))."""
    x, y = data
    seen = []

    def record(params, batch):
        jax.debug.callback(lambda rows: seen.append(np.asarray(rows)), batch[0])
        return mse(params, batch)

    key = jax.random.key(7)
    train.fit(record, params0(), optax.sgd(0.0), data, steps=8, batch_size=32, key=key, progress=False)
    per_epoch = 96 // 32
    for t, rows in enumerate(seen):
        perm = np.asarray(jax.random.permutation(jax.random.fold_in(key, t // per_epoch), 96))
        j = t % per_epoch
        np.testing.assert_array_equal(rows, x[perm[j * 32:(j + 1) * 32]])
    assert len(seen) == 8
    # each epoch visits every row once
    np.testing.assert_array_equal(np.sort(np.concatenate(seen[:3]), axis=0), np.sort(x, axis=0))


@pytest.mark.standard_promotion(OPTAX_ADAM)
def test_key_changes_batches_same_key_reproduces(data):
    kw = dict(steps=6, batch_size=16, progress=False)
    a = train.fit(mse, params0(), optax.adam(1e-2), data, key=jax.random.key(0), **kw)
    b = train.fit(mse, params0(), optax.adam(1e-2), data, key=jax.random.key(0), **kw)
    c = train.fit(mse, params0(), optax.adam(1e-2), data, key=jax.random.key(1), **kw)
    np.testing.assert_array_equal(a.history["loss"], b.history["loss"])
    assert not np.array_equal(a.history["loss"], c.history["loss"])


@pytest.mark.standard_promotion(OPTAX_ADAM)
def test_fit_iterable_of_batches_equals_train_step(data):
    x, y = data
    batches = [(x[i:i + 16], y[i:i + 16]) for i in range(0, 96, 16)]
    opt = optax.adam(1e-2)
    result = train.fit(mse, params0(), opt, batches, steps=6, steps_per_call=3, progress=False)
    p, s = params0(), opt.init(params0())
    step = train.train_step(mse, opt)
    losses = []
    for b in batches:
        p, s, m = step(p, s, b)
        losses.append(float(m["loss"]))
    assert_tree_allclose(result.params, p, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(result.history["loss"], losses, rtol=1e-5)


def test_fit_does_not_consume_callers_params(data):
    p = params0()
    train.fit(mse, p, optax.sgd(0.1), data, steps=2, progress=False)
    assert not any(x.is_deleted() for x in jax.tree.leaves(p))


def test_callbacks_see_every_dispatch(data):
    calls = []
    train.fit(mse, params0(), optax.sgd(0.1), data, steps=7, steps_per_call=3, progress=False,
              callbacks=[lambda step, params, m: calls.append((step, m["loss"], params[0]["b"].shape))])
    assert [c[0] for c in calls] == [3, 6, 7]
    assert all(np.isfinite(c[1]) and c[2] == (8,) for c in calls)


def test_progress_bar_shows_loss_and_rate(data, capsys):
    train.fit(mse, params0(), optax.sgd(0.1), data, steps=5, progress=True)
    err = capsys.readouterr().err
    assert "5/5" in err and "step/s" in err
    train.fit(mse, params0(), optax.sgd(0.1), data, steps=5, progress=False)
    assert capsys.readouterr().err == ""


def test_non_finite_loss_names_the_step(data):
    x, y = data
    batches = [(x[i:i + 16], y[i:i + 16]) for i in range(0, 96, 16)]
    bad = batches[4][0].copy()
    bad[3, 1] = np.nan
    batches[4] = (bad, batches[4][1])
    with pytest.raises(FloatingPointError, match=r"non-finite loss nan at step 4; training stopped"):
        train.fit(mse, params0(), optax.sgd(0.1), batches, steps=6, progress=False)


@pytest.mark.standard_promotion(OPTAX_ADAM)
def test_plot_history_writes_png(data, tmp_path):
    pytest.importorskip("matplotlib")
    result = train.fit(mse, params0(), optax.adam(1e-2), data, steps=20, batch_size=32, progress=False)
    path = tmp_path / "loss.png"
    fig = train.plot_history(result, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [ax.get_ylabel() for ax in fig.axes] == ["loss"]
    fig = train.plot_history({**result.history, "lr": np.full(20, 1e-2)})
    assert [ax.get_ylabel() for ax in fig.axes] == ["loss", "lr"]
    with pytest.raises(TypeError, match=r"plot_history\(history\): expected a FitResult"):
        train.plot_history([1.0, 2.0])


def test_public_namespace():
    import functorch_lite as fl

    assert fl.train.fit is train.fit and fl.train.train_step is train.train_step
    assert fl.train.FitResult is train.FitResult and callable(fl.train.plot_history)


@pytest.mark.standard_promotion(OPTAX_ADAM)
def test_second_fit_with_same_loss_and_optimizer_does_not_retrace(data):
    traces = []

    def counted(params, batch):
        traces.append(1)
        return mse(params, batch)

    opt = optax.adam(1e-2)
    a = train.fit(counted, params0(), opt, data, steps=4, batch_size=16, steps_per_call=2, progress=False)
    n = len(traces)
    b = train.fit(counted, params0(), opt, data, steps=4, batch_size=16, steps_per_call=2, progress=False)
    assert n > 0 and len(traces) == n
    np.testing.assert_array_equal(a.history["loss"], b.history["loss"])


def test_unhashable_optimizer_still_works(data):
    class Opt:  # an optimizer-like object that cannot be a cache key
        __hash__ = None

        def __init__(self):
            self.inner = optax.sgd(0.1)

        def init(self, params):
            return self.inner.init(params)

        def update(self, g, state, params=None):
            return self.inner.update(g, state, params)

    a = train.fit(mse, params0(), Opt(), data, steps=3, batch_size=16, progress=False)
    b = train.fit(mse, params0(), optax.sgd(0.1), data, steps=3, batch_size=16, progress=False)
    assert_tree_allclose(a.params, b.params, rtol=1e-6, atol=1e-7)


def test_fit_returns_params_in_the_callers_dict_order():
    # JAX sorts dict keys; torch keeps the caller's order: fit's params keep it too
    import optax
    from functorch_lite import train

    params = {"w": jnp.ones(2), "b": jnp.zeros(())}
    x, y = jnp.ones((4, 2)), jnp.ones(4)
    loss = lambda p, batch: jnp.mean((batch[0] @ p["w"] + p["b"] - batch[1]) ** 2)
    result = train.fit(loss, params, optax.sgd(0.1), (x, y), steps=2, progress=False)
    assert list(result.params) == ["w", "b"]
