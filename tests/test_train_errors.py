"""Bad input to train_step and fit: a clear TypeError/ValueError naming the call and the
argument, raised before any work (or at the first step, for shapes only the loss knows)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from functorch_lite import train


def loss(w, batch):
    x, y = batch
    return jnp.mean((x @ w - y) ** 2)


X = np.ones((16, 3), np.float32)
Y = np.ones(16, np.float32)
W = jnp.zeros(3)
FIT = r"fit\(loss, params, optimizer, data\): "


def fit(*args, **kwargs):
    kwargs.setdefault("progress", False)
    kwargs.setdefault("steps", 2)
    return train.fit(*args, **kwargs)


def test_batch_that_does_not_fit_the_loss_names_shapes():
    with pytest.raises(ValueError, match=FIT + r"loss_fn\(params, batch\) failed on a batch with shapes "
                                             r"\(\(8, 4\), \(8,\)\) and params with shapes \(3,\): TypeError: .*dot_general"):
        fit(loss, W, optax.sgd(0.1), (np.ones((16, 4), np.float32), Y), batch_size=8)
    step = train.train_step(loss, optax.sgd(0.1))
    with pytest.raises(ValueError, match=r"train_step\(loss, optimizer\)\(params, opt_state, batch\): loss_fn\(params, "
                                         r"batch\) failed on a batch with shapes \(\(2, 5\), \(2,\)\)"):
        step(jnp.zeros(3), optax.sgd(0.1).init(jnp.zeros(3)), (jnp.ones((2, 5)), jnp.ones(2)))


def test_broadcast_and_index_mismatches_name_shapes():
    def broadcast(w, batch):                 # (8, 3) @ (3,) is (8,), minus y of (4,)
        return jnp.mean((batch[0] @ w - batch[1][:4]) ** 2)

    with pytest.raises(ValueError, match=FIT.replace("loss", "broadcast") + r"loss_fn\(params, batch\) failed on a "
                                         r"batch with shapes \(\(8, 3\), \(8,\)\) .*TypeError: .*broadcasting"):
        fit(broadcast, W, optax.sgd(0.1), (X, Y), batch_size=8)

    def index(w, batch):
        return jnp.mean(batch[0][:, :, 0] @ w)

    with pytest.raises(ValueError, match=r"failed on a batch with shapes \(\(16, 3\), \(16,\)\) .*IndexError: Too many indices"):
        fit(index, W, optax.sgd(0.1), (X, Y))


class _Oops(Exception):
    pass


@pytest.mark.parametrize("error, message", [
    (TypeError, "unsupported operand type(s) for +: 'dict' and 'int'"),
    (IndexError, "list index out of range"),
    (ValueError, "the temperature must be positive"),
    (KeyError, "'labels'"),
    (_Oops, "a bug of the user's own"),
])
def test_other_errors_of_the_loss_propagate_unchanged(error, message):
    def failing(w, batch):
        raise error(message)

    with pytest.raises(error) as info:
        fit(failing, W, optax.sgd(0.1), (X, Y))
    assert type(info.value) is error and str(info.value) in (message, repr(message))
    step = train.train_step(failing, optax.sgd(0.1))
    with pytest.raises(error) as info:
        step(jnp.zeros(3), optax.sgd(0.1).init(jnp.zeros(3)), (jnp.ones((2, 3)), jnp.ones(2)))
    assert type(info.value) is error and "failed on a batch" not in str(info.value)


def test_loss_must_be_a_scalar():
    with pytest.raises(ValueError, match=r"fit\(<lambda>, params, optimizer, data\): loss_fn must return a scalar loss, got shape \(16,\)"):
        fit(lambda w, b: (b[0] @ w - b[1]) ** 2, W, optax.sgd(0.1), (X, Y))
    with pytest.raises(TypeError, match=r"fit\(<lambda>, params, optimizer, data\): loss_fn must return a scalar loss .* got dict"):
        fit(lambda w, b: {"loss": loss(w, b)}, W, optax.sgd(0.1), (X, Y))


@pytest.mark.parametrize("steps", [0, -3])
def test_steps_must_be_positive(steps):
    with pytest.raises(ValueError, match=FIT + f"steps must be a positive int, got {steps}"):
        fit(loss, W, optax.sgd(0.1), (X, Y), steps=steps)
    with pytest.raises(TypeError, match=FIT + r"steps must be a positive int, got 2.5"):
        fit(loss, W, optax.sgd(0.1), (X, Y), steps=2.5)


def test_empty_data():
    with pytest.raises(ValueError, match=FIT + r"data is an empty tuple"):
        fit(loss, W, optax.sgd(0.1), ())
    with pytest.raises(ValueError, match=FIT + r"data has 0 rows"):
        fit(loss, W, optax.sgd(0.1), (X[:0], Y[:0]))
    with pytest.raises(ValueError, match=FIT + r"data yielded no batches"):
        fit(loss, W, optax.sgd(0.1), [])
    with pytest.raises(ValueError, match=FIT + r"data yielded no batches"):
        fit(loss, W, optax.sgd(0.1), (b for b in []))


def test_batch_size_larger_than_data():
    with pytest.raises(ValueError, match=FIT + r"batch_size=17 is larger than the 16 rows of data; use batch_size <= 16"):
        fit(loss, W, optax.sgd(0.1), (X, Y), batch_size=17)
    with pytest.raises(ValueError, match=FIT + r"batch_size must be a positive int, got 0"):
        fit(loss, W, optax.sgd(0.1), (X, Y), batch_size=0)


def test_data_shapes():
    with pytest.raises(ValueError, match=FIT + r"the arrays of data must have the same number of rows .* \(\(16, 3\), \(15,\)\)"):
        fit(loss, W, optax.sgd(0.1), (X, Y[:15]))
    with pytest.raises(ValueError, match=FIT + r"data\[1\] has shape \(\); every array of data needs a leading axis"):
        fit(loss, W, optax.sgd(0.1), (X, np.float32(1.0)))
    with pytest.raises(TypeError, match=FIT + r"data must be a tuple of arrays .* got int"):
        fit(loss, W, optax.sgd(0.1), 3)


def test_accumulate_must_divide_batch():
    with pytest.raises(ValueError, match=FIT + r"the batch size 8 must be a multiple of accumulate=3"):
        fit(loss, W, optax.sgd(0.1), (X, Y), batch_size=8, accumulate=3)
    with pytest.raises(ValueError, match=r"train_step\(loss, optimizer\)\(params, opt_state, batch\): the batch size 5"):
        train.train_step(loss, optax.sgd(0.1), accumulate=2)(
            jnp.zeros(3), optax.sgd(0.1).init(jnp.zeros(3)), (jnp.ones((5, 3)), jnp.ones(5)))


def test_iterable_batches_checked():
    batches = [(X[:8], Y[:8]), (X[:4], Y[:4])]
    with pytest.raises(ValueError, match=FIT + r"batch 1 of data has shapes \(\(4, 3\), \(4,\)\), the first had \(\(8, 3\), \(8,\)\)"):
        fit(loss, W, optax.sgd(0.1), batches)
    with pytest.raises(ValueError, match=FIT + r"data ran out after 1 batches; it must yield one batch per step"):
        fit(loss, W, optax.sgd(0.1), [(X[:8], Y[:8])], steps=2)
    with pytest.raises(ValueError, match=FIT + r"batch_size=4 but the first batch of data has 8 rows"):
        fit(loss, W, optax.sgd(0.1), [(X[:8], Y[:8])], batch_size=4)
    with pytest.raises(ValueError, match=FIT + r"the arrays of a batch must share their leading \(batch\) size"):
        fit(loss, W, optax.sgd(0.1), [(X[:8], Y[:7])])


def test_other_arguments():
    with pytest.raises(TypeError, match=r"expected optimizer to be an optax.GradientTransformation .* got str"):
        fit(loss, W, "adam", (X, Y))
    with pytest.raises(TypeError, match=r"train_step\(loss, optimizer\): expected optimizer to be an optax"):
        train.train_step(loss, object())
    with pytest.raises(TypeError, match=r"fit\(loss_fn, params, optimizer, data\): expected loss_fn to be a callable loss_fn\(params, batch\) -> scalar, got int"):
        train.fit(3, W, optax.sgd(0.1), (X, Y), steps=1)
    with pytest.raises(TypeError, match=FIT + r"params has dtype int32; derivatives are taken"):
        fit(loss, jnp.zeros(3, jnp.int32), optax.sgd(0.1), (X, Y))
    with pytest.raises(TypeError, match=FIT + r"key must be one PRNG key \(jax.random.key\(seed\), or a raw uint32 key of shape \(2,\), an int seed, or None\); got str"):
        fit(loss, W, optax.sgd(0.1), (X, Y), key="seed")
    with pytest.raises(TypeError, match=FIT + r"expected callbacks\[0\] to be a callable"):
        fit(loss, W, optax.sgd(0.1), (X, Y), callbacks=[3])
    with pytest.raises(TypeError, match=FIT + r"callbacks must be a sequence of callables"):
        fit(loss, W, optax.sgd(0.1), (X, Y), callbacks=print)
    with pytest.raises(TypeError, match=FIT + r"expected progress to be True or False"):
        fit(loss, W, optax.sgd(0.1), (X, Y), progress=None)
    with pytest.raises(ValueError, match=FIT + r"steps_per_call must be a positive int, got 0"):
        fit(loss, W, optax.sgd(0.1), (X, Y), steps_per_call=0)


# ---------------------------------------------------------------- issue 13


def test_non_finite_params_are_never_returned_without_checkpoint_dir():
    """The last update's gradient is 0 * inf: the loss is finite, the params are not."""
    sneaky = lambda w, b: 0.0 * jnp.sum(b[0]) + 0.0 * jnp.sqrt(jnp.abs(w[0]))  # noqa: E731
    with pytest.raises(FloatingPointError, match=r"fit\(<lambda>, params, optimizer, data\): the parameters or "
                                                 r"optimizer state became non-finite in steps 0\.\.0 .* No checkpoint was written"):
        train.fit(sneaky, jnp.zeros(2), optax.sgd(0.1), (jnp.ones((4, 2)), jnp.ones(4)), steps=1, progress=False)


def test_data_as_list_or_dict_is_refused():
    with pytest.raises(TypeError, match=FIT + r"data must be a tuple \(x, y, \.\.\.\) of arrays, got a list of 2 "
                                             r"arrays, which would be read as 2 batches; pass tuple\(data\)"):
        fit(loss, W, optax.sgd(0.1), [X, Y], steps=1)
    with pytest.raises(TypeError, match=FIT + r"data must be a tuple \(x, y, \.\.\.\) of arrays, got a dict; pass "
                                             r"tuple\(data\[k\] for k in \['x', 'y'\]\)"):
        fit(loss, W, optax.sgd(0.1), {"x": X, "y": Y})
    with pytest.raises(TypeError, match=FIT + r"data must be a tuple \(x, y, \.\.\.\) of arrays, but data\[1\] is a list"):
        fit(loss, W, optax.sgd(0.1), (X, Y.tolist()))
    # a list of batch tuples is still an iterable of batches
    assert fit(loss, W, optax.sgd(0.1), [(X[:8], Y[:8]), (X[8:], Y[8:])]).step == 2


def test_loss_returning_python_float():
    with pytest.raises(TypeError, match=r"fit\(<lambda>, params, optimizer, data\): loss_fn returned the Python "
                                        r"float 1\.0, which cannot depend on params"):
        fit(lambda w, b: 1.0, W, optax.sgd(0.1), (X, Y))


def test_several_keys_are_refused():
    import jax
    keys = jax.random.split(jax.random.key(0), 2)
    with pytest.raises(ValueError, match=FIT + r"key must be one PRNG key, got an array of 2 keys \(jax.random.split "
                                             r"returns several\); pass one of them, e.g. keys\[0\]"):
        fit(loss, W, optax.sgd(0.1), (X, Y), key=keys)
    with pytest.raises(ValueError, match=FIT + r"key must be one PRNG key, got an array of 2 raw keys"):
        fit(loss, W, optax.sgd(0.1), (X, Y), key=jax.random.split(jax.random.PRNGKey(0), 2))


def test_resume_must_be_bool_or_force():
    with pytest.raises(TypeError, match=FIT + r"resume must be True, False or \"force\", got 'yes'"):
        fit(loss, W, optax.sgd(0.1), (X, Y), resume="yes")


@pytest.mark.slow  # long: CI's slow step runs it
@pytest.mark.standard_promotion("optax.contrib.reduce_on_plateau multiplies by a Python-typed "
                                "scale under standard promotion only")
def test_optimizers_needing_the_loss_value():
    """reduce_on_plateau needs value=, lbfgs value=, grad= and value_fn=: fit passes them."""
    rng = np.random.RandomState(0)
    x = rng.randn(32, 3).astype(np.float32)
    y = x @ np.array([1.0, -2.0, 0.5], np.float32)
    r = fit(loss, W, optax.lbfgs(), (x, y), steps=10)
    np.testing.assert_allclose(r.params, [1.0, -2.0, 0.5], atol=1e-4)
    # accumulate=2: lbfgs's line search sees the same whole-batch loss
    r2 = fit(loss, W, optax.lbfgs(), (x, y), steps=10, accumulate=2)
    np.testing.assert_allclose(r2.params, [1.0, -2.0, 0.5], atol=1e-4)
    plateau = optax.chain(optax.sgd(0.05), optax.contrib.reduce_on_plateau(patience=1, factor=0.5, cooldown=0))
    r3 = fit(loss, W, plateau, (x, y), steps=30)
    # the plateau detector saw every step's loss through value=
    np.testing.assert_allclose(float(r3.opt_state[1].best_value), r3.history["loss"].min(), rtol=1e-6)
    assert r3.history["loss"][-1] < r3.history["loss"][0]
    # lbfgs's state holds one array twice; train_step donates, so it copies the duplicate
    lbfgs = optax.lbfgs()
    p, s, m = train.train_step(loss, lbfgs)(jnp.zeros(3), lbfgs.init(jnp.zeros(3)), (jnp.asarray(x), jnp.asarray(y)))
    assert float(m["loss"]) > 0 and np.isfinite(np.asarray(p)).all()
    step = train.train_step(loss, plateau)
    p, s, m = step(jnp.zeros(3), plateau.init(jnp.zeros(3)), (jnp.asarray(x), jnp.asarray(y)))
    np.testing.assert_allclose(float(s[1].best_value), float(m["loss"]), rtol=1e-6)


def test_train_step_with_another_optimizers_state():
    step = train.train_step(loss, optax.adam(0.1))
    wrong = optax.sgd(0.1, momentum=0.9).init(jnp.zeros(3))
    with pytest.raises(ValueError, match=r"train_step\(loss, optimizer\)\(params, opt_state, batch\): opt_state does "
                                         r"not belong to this optimizer and params: it holds \['TraceState', "
                                         r"'EmptyState'\].* makes \['ScaleByAdamState', 'EmptyState'\].*optimizer\.init\(params\)"):
        step(jnp.zeros(3), wrong, (jnp.ones((4, 3)), jnp.ones(4)))
    with pytest.raises(ValueError, match=r"opt_state does not belong to this optimizer and params"):
        step(jnp.zeros(3), optax.adam(0.1).init(jnp.zeros(4)), (jnp.ones((4, 3)), jnp.ones(4)))
