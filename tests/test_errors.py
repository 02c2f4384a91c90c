"""Every user mistake gets a TypeError/ValueError naming the transform and the argument."""

import jax.numpy as jnp
import pytest

import functorch_lite as fl

X = jnp.array([1.0, 2.0, 3.0])


def test_grad_non_scalar_output():
    with pytest.raises(ValueError, match=r"grad\(<lambda>\)\(\*args\): expected the function to return a scalar, got shape \(3,\).*use vjp or jacrev"):
        fl.grad(lambda x: x * 2)(X)


def test_grad_non_array_output_and_complex_output():
    with pytest.raises(TypeError, match=r"grad\(<lambda>\)\(\*args\): expected the function to return a scalar array, got str"):
        fl.grad(lambda x: "nope")(X)
    with pytest.raises(TypeError, match=r"expected a real floating-point scalar, got dtype complex64"):
        fl.grad(lambda x: jnp.sum(x) * 1j)(X)


@pytest.mark.parametrize("bad, dtype", [(jnp.array([1, 2]), "int32"), (jnp.array([True]), "bool"), (3, "int64")])
def test_integer_and_boolean_inputs(bad, dtype):
    with pytest.raises(TypeError, match=rf"grad\(<lambda>\)\(\*args\): args\[0\] has dtype {dtype}; .*astype\(jnp.float32\)"):
        fl.grad(lambda x: jnp.sum(x * 1.0))(bad)
    with pytest.raises(TypeError, match=r"jacrev\(<lambda>\)\(\*args\): args\[0\] has dtype"):
        fl.jacrev(lambda x: x * 1.0)(bad)


def test_non_array_leaf():
    with pytest.raises(TypeError, match=r"grad\(<lambda>\)\(\*args\): args\[0\]\['name'\] is a str, not an array"):
        fl.grad(lambda p: jnp.sum(p["w"]))({"w": X, "name": "w"})


@pytest.mark.parametrize("argnums, exc, msg", [
    ((), ValueError, r"grad: argnums=\(\) is empty"),
    (1.5, TypeError, r"grad: argnums=1.5 is not an integer"),
    ((0, "a"), TypeError, r"grad: argnums=\(0, 'a'\) contains 'a', which is not an integer"),
    (True, TypeError, r"grad: argnums=True is not an integer"),
])
def test_bad_argnums_at_construction(argnums, exc, msg):
    with pytest.raises(exc, match=msg):
        fl.grad(lambda x: x.sum(), argnums=argnums)


def test_bad_argnums_at_call():
    with pytest.raises(ValueError, match=r"grad\(f\)\(\*args\): argnums=2 is out of range for a function called with 2 positional argument\(s\); use an index in \[-2, 1\]"):
        def f(x, y):
            return jnp.sum(x * y)
        fl.grad(f, argnums=2)(X, X)
    with pytest.raises(ValueError, match=r"names the same argument twice"):
        fl.grad(lambda x, y: jnp.sum(x * y), argnums=(0, -2))(X, X)
    with pytest.raises(ValueError, match=r"jacfwd\(<lambda>\)\(\*args\): argnums=-3 is out of range"):
        fl.jacfwd(lambda x, y: x * y, argnums=-3)(X, X)


def test_has_aux_without_pair():
    with pytest.raises(ValueError, match=r"grad\(<lambda>\)\(\*args\): has_aux=True expects the function to return a tuple \(output, aux\), got an array of shape \(\)"):
        fl.grad(lambda x: x.sum(), has_aux=True)(X)
    with pytest.raises(ValueError, match=r"got a tuple of length 3"):
        fl.vjp(lambda x: (x, 1, 2), X, has_aux=True)
    with pytest.raises(ValueError, match=r"jacrev\(<lambda>\)\(\*args\): has_aux=True"):
        fl.jacrev(lambda x: x, has_aux=True)(X)
    with pytest.raises(TypeError, match=r"grad: expected has_aux to be True or False"):
        fl.grad(lambda x: x.sum(), has_aux="yes")


def test_not_callable():
    with pytest.raises(TypeError, match=r"grad: expected func to be a callable, got Array"):
        fl.grad(X)
    with pytest.raises(TypeError, match=r"vmap: expected func to be a callable"):
        fl.vmap(3)


def test_jvp_primals_tangents_mismatch():
    f = lambda x: x * 2
    with pytest.raises(TypeError, match=r"jvp\(<lambda>, primals, tangents\): expected primals to be a tuple, got ArrayImpl"):
        fl.jvp(f, X, X)
    with pytest.raises(ValueError, match=r"got 1 primal\(s\) but 2 tangent\(s\)"):
        fl.jvp(f, (X,), (X, X))
    with pytest.raises(ValueError, match=r"tangents\[0\] has shape \(2,\) but primals\[0\] has shape \(3,\)"):
        fl.jvp(f, (X,), (jnp.ones(2),))
    with pytest.raises(TypeError, match=r"tangents\[0\] has dtype int32 but primals\[0\] needs float32; cast it"):
        fl.jvp(f, (X,), (jnp.ones(3, jnp.int32),))
    with pytest.raises(ValueError, match=r"tangents must have the same structure as primals"):
        fl.jvp(lambda p: p["a"], ({"a": X},), ({"b": X},))


def test_linearize_tangent_mismatch():
    _, jvp_fn = fl.linearize(lambda x: x * 2, X)
    with pytest.raises(ValueError, match=r"linearize\(<lambda>, \*primals\)\[1\]\(\*tangents\): tangents\[0\] has shape \(4,\) but primals\[0\] has shape \(3,\)"):
        jvp_fn(jnp.ones(4))
    with pytest.raises(ValueError, match=r"got 1 primal\(s\) but 2 tangent\(s\)"):
        jvp_fn(X, X)


def test_vjp_cotangent_mismatch():
    _, vjp_fn = fl.vjp(lambda x: {"a": x, "b": x.sum()}, X)
    with pytest.raises(ValueError, match=r"vjp\(<lambda>, \*primals\)\[1\]\(cotangents\): cotangents must have the same structure as the output"):
        vjp_fn(jnp.ones(3))
    with pytest.raises(ValueError, match=r"cotangents\['a'\] has shape \(2,\) but the output\['a'\] has shape \(3,\)"):
        vjp_fn({"a": jnp.ones(2), "b": jnp.array(1.0)})
    with pytest.raises(TypeError, match=r"cotangents\['b'\] has dtype int32 but the output\['b'\] needs float32"):
        vjp_fn({"a": jnp.ones(3), "b": jnp.array(1)})


@pytest.mark.parametrize("transform", [fl.jacrev, fl.jacfwd, fl.hessian])
def test_bad_chunk_size(transform):
    name = transform.__name__
    with pytest.raises(ValueError, match=rf"{name}: chunk_size must be a positive int or None, got 0"):
        transform(lambda x: x.sum(), chunk_size=0)
    with pytest.raises(TypeError, match=rf"{name}: chunk_size must be a positive int or None, got 2.5"):
        transform(lambda x: x.sum(), chunk_size=2.5)
    with pytest.raises(ValueError, match=r"vmap: chunk_size must be a positive int or None, got -1"):
        fl.vmap(lambda x: x, chunk_size=-1)


def test_unknown_layout_and_mode():
    with pytest.raises(ValueError, match=r"jacrev: unknown layout='row'; choose one of 'numerator', 'denominator'"):
        fl.jacrev(lambda x: x, layout="row")
    with pytest.raises(ValueError, match=r"jacfwd: unknown layout='columns'"):
        fl.jacfwd(lambda x: x, layout="columns")
    with pytest.raises(ValueError, match=r"hessian: unknown mode='reverse'; choose one of 'auto', 'fwd-over-rev'"):
        fl.hessian(lambda x: x.sum(), mode="reverse")


def test_vmap_in_dims_errors():
    A = jnp.ones((3, 4))
    with pytest.raises(ValueError, match=r"vmap\(<lambda>, in_dims=2\)\(\*args\): in_dims=2 for args\[0\] of shape \(3, 4\) is out of range; use an axis in \[-2, 1\] or None"):
        fl.vmap(lambda a: a, in_dims=2)(A)
    with pytest.raises(ValueError, match=r"batch sizes differ: args\[0\] has 3 along its mapped axis but args\[1\] has 5"):
        fl.vmap(lambda a, b: a.sum() + b.sum())(A, jnp.ones((5, 2)))
    with pytest.raises(ValueError, match=r"in_dims has 1 entries but the function was called with 2 positional argument\(s\)"):
        fl.vmap(lambda a, b: a, in_dims=(0,))(A, A)
    with pytest.raises(ValueError, match=r"no input is batched"):
        fl.vmap(lambda a: a, in_dims=None)(A)
    with pytest.raises(ValueError, match=r"does not fit the structure of the inputs"):
        fl.vmap(lambda p: p["a"], in_dims=({"b": 0},))({"a": A})
    with pytest.raises(TypeError, match=r"vmap: in_dims/out_dims entries must be ints or None, got 'x'"):
        fl.vmap(lambda a: a, in_dims="x")
    with pytest.raises(ValueError, match=r"randomness='different' has no meaning in JAX.*jax.random.split"):
        fl.vmap(lambda a: a, randomness="different")


def test_jacobian_of_integer_output():
    with pytest.raises(TypeError, match=r"jacrev\(<lambda>\)\(\*args\): the output has dtype int32|the output is int32"):
        fl.jacrev(lambda x: jnp.round(x).astype(jnp.int32))(X)


def test_check_grad_bad_options():
    with pytest.raises(ValueError, match=r"check_grad\(<lambda>, \*args\): order must be 1 or 2, got 3"):
        fl.check_grad(lambda x: x, X, order=3)
    with pytest.raises(ValueError, match=r"modes must be a non-empty subset of \('fwd', 'rev'\)"):
        fl.check_grad(lambda x: x, X, modes=("sideways",))
