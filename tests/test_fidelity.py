"""Fidelity to torch.func (issue 12) and the transform-layer items of issue 13: dict
order, the complex convention, torch's checks, JAX users' spellings, typed PRNG keys,
custom_vjp under the higher-order transforms, the porting helpers."""

from __future__ import annotations

import warnings
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import custom_vjp
from jax.lax import while_loop

import functorch_lite as fl
from functorch_lite._higher import NestingFallbackWarning

from conftest import assert_tree_allclose, keys_at_every_depth

FLOAT_TO_COMPLEX = "the test's own function promotes a real input to complex on purpose"

X = jnp.array([1.0, 2.0, 3.0])


# ----------------------------------------------------------------------------- dict order

P = {"w": jnp.float32(1.0), "b": jnp.float32(2.0)}
NESTED = {"z": {"y": jnp.ones(2), "a": jnp.float32(3.0)}, "m": jnp.ones(3)}


def f_nested(p):
    return jnp.sum(p["z"]["y"] ** 2) * p["z"]["a"] + jnp.sum(jnp.sin(p["m"]))


def test_grad_keeps_the_callers_key_order():
    g = fl.grad(lambda p: 10 * p["w"] + p["b"])(P)
    assert list(g) == ["w", "b"]
    # the tutorial's check: zip(p.values(), g.values()) pairs the right entries
    assert [float(v) for v in g.values()] == [10.0, 1.0]
    g = fl.grad(f_nested)(NESTED)
    assert keys_at_every_depth(g) == keys_at_every_depth(NESTED) == [["z", "m"], ["y", "a"]]
    assert_tree_allclose(g, jax.grad(f_nested)(NESTED))


def test_grad_family_aux_and_tuple_argnums_keep_order():
    f = lambda p, q: (f_nested(p) * q["k"], {"s": q["k"], "c": p["m"]})
    q = {"k": jnp.float32(2.0), "e": jnp.float32(0.0)}
    (gp, gq), aux = fl.grad(f, argnums=(0, 1), has_aux=True)(NESTED, q)
    assert keys_at_every_depth(gp) == [["z", "m"], ["y", "a"]] and list(gq) == ["k", "e"]
    assert list(aux) == ["s", "c"]
    g, (v, aux) = fl.grad_and_value(f, has_aux=True)(NESTED, q)
    assert list(g) == ["z", "m"] and list(aux) == ["s", "c"]
    (v, aux), g = fl.value_and_grad(f, has_aux=True)(NESTED, q)
    assert list(g) == ["z", "m"] and list(aux) == ["s", "c"]


def test_the_function_sees_the_callers_order():
    seen = []
    fl.grad(lambda p: seen.append(list(p)) or p["w"] * p["b"])(P)
    fl.jacrev(lambda p: seen.append(list(p)) or p["w"] * p["b"])(P)
    fl.vmap(lambda p: seen.append(list(p)) or p["w"])({"w": jnp.ones(2), "b": jnp.ones(2)})
    assert seen == [["w", "b"]] * 3


def test_vjp_jvp_linearize_keep_order():
    f = lambda p: {"y": p["w"] * p["b"], "x": p["w"] ** 2}
    out, vjp_fn = fl.vjp(f, P)
    assert list(out) == ["y", "x"]
    (ct,) = vjp_fn({"y": 1.0, "x": 0.0})
    assert list(ct) == ["w", "b"]
    assert_tree_allclose(ct, {"w": 2.0, "b": 1.0})
    out, t = fl.jvp(f, (P,), (P,))
    assert list(out) == list(t) == ["y", "x"]
    out, jvp_fn = fl.linearize(f, P)
    assert list(out) == list(jvp_fn(P)) == ["y", "x"]


@pytest.mark.parametrize("chunk_size", [None, 1])
@pytest.mark.parametrize("transform", [fl.jacrev, fl.jacfwd])
def test_jacobian_nesting_keeps_order(transform, chunk_size):
    f = lambda p: {"y": p["w"] * p["b"], "x": jnp.stack([p["w"], p["b"]])}
    J = transform(f, chunk_size=chunk_size)(P)
    assert keys_at_every_depth(J) == [["y", "x"], ["w", "b"], ["w", "b"]]
    assert_tree_allclose(J, jax.jacrev(f)(P))


@pytest.mark.parametrize("mode", ["auto", "fwd-over-rev", "rev-over-rev", "rev-over-fwd", "fwd-over-fwd"])
def test_hessian_nesting_keeps_order(mode):
    f = lambda p: p["w"] ** 2 * p["b"]
    H = fl.hessian(f, mode=mode)(P)
    assert keys_at_every_depth(H) == [["w", "b"], ["w", "b"], ["w", "b"]]
    assert float(H["w"]["b"]) == 2.0 and float(H["b"]["b"]) == 0.0 and float(H["w"]["w"]) == 4.0


def test_hvp_vhp_hessian_diag_keep_order():
    f = lambda p: p["w"] ** 2 * p["b"]
    for t in (fl.hvp, fl.vhp):
        g, hv = t(f, (P,), (P,))
        assert list(g) == list(hv) == ["w", "b"]
        assert_tree_allclose(hv, {"w": 4.0 * 1 + 2.0 * 2, "b": 2.0})
    d = fl.hessian_diag(f)(P)
    assert list(d) == ["w", "b"]
    assert_tree_allclose(d, {"w": 4.0, "b": 0.0})


@pytest.mark.parametrize("chunk_size", [None, 2])
def test_vmap_outputs_keep_the_functions_order(chunk_size):
    # jax.vmap returns {'a', 'b'} sorted; torch.func.vmap returns the function's order
    assert list(jax.vmap(lambda x: {"b": x, "a": x})(jnp.ones(3))) == ["a", "b"]
    out = fl.vmap(lambda x: {"b": x, "a": {"d": x, "c": x}}, chunk_size=chunk_size)(jnp.ones(3))
    assert keys_at_every_depth(out) == [["b", "a"], ["d", "c"]]
    per = fl.vmap(fl.grad(f_nested), in_dims=({"z": {"y": 0, "a": None}, "m": None},))(
        {"z": {"y": jnp.ones((4, 2)), "a": jnp.float32(3.0)}, "m": jnp.ones(3)})
    assert keys_at_every_depth(per) == [["z", "m"], ["y", "a"]]


def test_dict_order_against_torch():
    torch = pytest.importorskip("torch")
    tp = {"w": torch.tensor(1.0), "b": torch.tensor(2.0)}
    theirs = torch.func.grad(lambda p: 10 * p["w"] + p["b"])(tp)
    ours = fl.grad(lambda p: 10 * p["w"] + p["b"])(P)
    assert list(ours) == list(theirs)
    theirs = torch.func.vmap(lambda x: {"b": x, "a": x})(torch.ones(2))
    assert list(fl.vmap(lambda x: {"b": x, "a": x})(jnp.ones(2))) == list(theirs)


def test_reorder_helper():
    from functorch_lite import _args
    ref = {"b": (1, {"y": 0, "x": 0}), "a": [0]}
    sorted_ = {"a": [5], "b": (6, {"x": 7, "y": 8})}
    out = _args.reorder(_args.order_of(ref), sorted_)
    assert keys_at_every_depth(out) == [["b", "a"], ["y", "x"]]
    assert out == {"b": (6, {"y": 8, "x": 7}), "a": [5]}


# ----------------------------------------------------------------------------- complex


def test_complex_gradient_is_torch_convention():
    f = lambda z: jnp.real(z) ** 2 + jnp.imag(z) ** 2
    g = fl.grad(f)(3.0 + 4j)
    assert complex(g) == 6 + 8j          # steepest ascent; JAX's own is 6-8j
    assert complex(jax.grad(f)(3.0 + 4j)) == 6 - 8j
    z = jnp.complex64(3 + 4j)
    for _ in range(50):                  # z -= lr * g descends to the minimum at 0
        z = z - 0.1 * fl.grad(f)(z)
    assert abs(complex(z)) < 1e-3


@pytest.mark.standard_promotion(FLOAT_TO_COMPLEX)
def test_complex_against_torch():
    torch = pytest.importorskip("torch")
    tf = torch.func
    rng = np.random.default_rng(0)
    z = rng.normal(size=3) + 1j * rng.normal(size=3)
    w = rng.normal(size=3)
    jf = lambda z, w: jnp.sum(jnp.abs(z * w + 1j) ** 2 + jnp.real(z) * jnp.imag(z) ** 2)
    tfn = lambda z, w: torch.sum(torch.abs(z * w + 1j) ** 2 + torch.real(z) * torch.imag(z) ** 2)
    with jax.enable_x64(True):
        ours = fl.grad(jf, argnums=(0, 1))(jnp.asarray(z), jnp.asarray(w))
        theirs = tf.grad(tfn, argnums=(0, 1))(torch.tensor(z), torch.tensor(w))
        for a, b in zip(ours, theirs):
            np.testing.assert_allclose(np.asarray(a), b.numpy(), rtol=1e-12)
        # vjp: conj(J^T conj(v)) for complex outputs, as torch
        hf = lambda z: z * z.conj() * (1 + 1j) + jnp.sin(z)
        v = rng.normal(size=3) + 1j * rng.normal(size=3)
        (ours,) = fl.vjp(hf, jnp.asarray(z))[1](jnp.asarray(v))
        (theirs,) = tf.vjp(lambda z: z * z.conj() * (1 + 1j) + torch.sin(z), torch.tensor(z))[1](torch.tensor(v))
        np.testing.assert_allclose(np.asarray(ours), theirs.numpy(), rtol=1e-12)


def test_holomorphic_is_jaxs_meaning():
    z = jnp.array([1.0 + 2j, -0.5 + 1j], jnp.complex64)
    assert_tree_allclose(fl.grad(lambda z: jnp.sum(z ** 3), holomorphic=True)(z[0]), 3 * z[0] ** 2)
    g, v = fl.grad_and_value(lambda z: z ** 3, holomorphic=True)(z[0])
    v2, g2 = fl.value_and_grad(lambda z: z ** 3, holomorphic=True)(z[0])
    assert_tree_allclose((g, v), (g2, v2))
    ref = jax.jacrev(lambda z: z ** 2 * (1 + 1j), holomorphic=True)(z)
    for t in (fl.jacrev, fl.jacfwd):
        for c in (None, 1):
            assert_tree_allclose(t(lambda z: z ** 2 * (1 + 1j), chunk_size=c, holomorphic=True)(z), ref)
    assert_tree_allclose(fl.jacobian(lambda z: z ** 2, mode="fwd", holomorphic=True)(z), jnp.diag(2 * z))
    assert_tree_allclose(fl.jacobian(lambda z: z ** 2, holomorphic=True)(z), jnp.diag(2 * z))
    assert_tree_allclose(fl.hessian(lambda z: jnp.sum(z ** 3), holomorphic=True)(z), jnp.diag(6 * z))
    with pytest.raises(TypeError, match=r"grad\(<lambda>\)\(\*args\): holomorphic=True needs complex inputs, but args\[0\] has dtype float32"):
        fl.grad(lambda x: x.sum() * 1j, holomorphic=True)(X)
    with pytest.raises(TypeError, match=r"holomorphic=True needs a complex scalar output, got dtype float32"):
        fl.grad(lambda z: jnp.abs(z), holomorphic=True)(z[0])
    with pytest.raises(TypeError, match=r"jacfwd\(<lambda>\)\(\*args\): the output is float32, but holomorphic=True needs complex outputs"):
        fl.jacfwd(lambda z: jnp.abs(z), holomorphic=True)(z)
    with pytest.raises(TypeError, match=r"grad: expected holomorphic to be True or False"):
        fl.grad(jnp.sum, holomorphic=1)


def test_complex_messages_suggest_holomorphic_that_exists():
    with pytest.raises(TypeError, match=r"expected a real floating-point scalar, got dtype complex64\. Pass holomorphic=True"):
        fl.grad(lambda z: z ** 2)(jnp.complex64(1 + 1j))
    fl.grad(lambda z: z ** 2, holomorphic=True)(jnp.complex64(1 + 1j))    # ... which works


@pytest.mark.parametrize("chunk_size", [None, 1, 2])
@pytest.mark.standard_promotion(FLOAT_TO_COMPLEX)
def test_jacobians_reject_complex_chunked_or_not(chunk_size):
    """Issue 13 item 8: chunked jacrev returned the real identity, chunked jacfwd the
    real-axis derivative only; now all agree with the unchunked checks."""
    x = jnp.ones(3)
    with pytest.raises(TypeError, match=r"jacrev\(<lambda>\)\(\*args\): the output is complex64; jacrev differentiates real outputs\. For a holomorphic function pass holomorphic=True"):
        fl.jacrev(lambda x: x * (1 + 1j), chunk_size=chunk_size)(x)
    with pytest.raises(TypeError, match=r"jacfwd\(<lambda>\)\(\*args\): the output is complex64; jacfwd differentiates real outputs"):
        fl.jacfwd(lambda x: x * (1 + 1j), chunk_size=chunk_size)(x)
    for t in (fl.jacrev, fl.jacfwd):
        with pytest.raises(TypeError, match=rf"{t.__name__}\(abs\)\(\*args\): args\[0\] is complex64; {t.__name__} differentiates real inputs \(as torch.func\)"):
            t(jnp.abs, chunk_size=chunk_size)(x * 1j)


def test_jacobians_reject_complex_like_torch():
    torch = pytest.importorskip("torch")
    with pytest.raises(RuntimeError, match="Expected all inputs to be real"):
        torch.func.jacrev(torch.abs)(torch.ones(2) * 1j)
    with pytest.raises(RuntimeError, match="Expected all outputs to be real"):
        torch.func.jacfwd(lambda x: x * (1 + 1j))(torch.ones(2))


# ----------------------------------------------------------------------------- checks


@pytest.mark.parametrize("call", [
    lambda f: fl.grad(f, has_aux=True)(X),
    lambda f: fl.vjp(f, X, has_aux=True),
    lambda f: fl.jvp(f, (X,), (X,), has_aux=True),
    lambda f: fl.jacrev(f, has_aux=True)(X),
    lambda f: fl.jacfwd(f, has_aux=True)(X),
])
def test_has_aux_needs_a_tuple_of_arrays(call):
    with pytest.raises(ValueError, match=r"has_aux=True expects the function to return a tuple \(output, aux\), got a list of length 2"):
        call(lambda x: [jnp.sum(x ** 2), x])
    for bad, kind in ((3, "int"), (1.5, "float"), ("tag", "str")):
        with pytest.raises(TypeError, match=rf"has_aux=True: aux\['k'\] is a {kind}, not an array; aux may hold arrays only"):
            call(lambda x: (jnp.sum(x ** 2), {"k": bad}))


@pytest.mark.parametrize("empty", [None, (), {}])
def test_empty_output_rejected(empty):
    msg = r"expected f to return at least one array"
    for run in (lambda: fl.grad(lambda x: empty)(X), lambda: fl.vjp(lambda x: empty, X),
                lambda: fl.jvp(lambda x: empty, (X,), (X,)), lambda: fl.jacrev(lambda x: empty)(X),
                lambda: fl.jacfwd(lambda x: empty)(X), lambda: fl.linearize(lambda x: empty, X)):
        with pytest.raises(ValueError, match=msg):
            run()


def test_python_float_output_rejected():
    msg = r"the output is a Python float, not an array, so it cannot depend on the inputs"
    with pytest.raises(TypeError, match=r"jvp\(<lambda>, primals, tangents\): " + msg):
        fl.jvp(lambda x: 1.0, (X,), (X,))
    with pytest.raises(TypeError, match=r"jacrev\(<lambda>\)\(\*args\): " + msg):
        fl.jacrev(lambda x: 1.0)(X)
    with pytest.raises(TypeError, match=r"jacfwd\(<lambda>\)\(\*args\): " + msg):
        fl.jacfwd(lambda x: 1.0)(X)
    with pytest.raises(TypeError, match=r"vjp\(<lambda>, \*primals\): " + msg):
        fl.vjp(lambda x: 1.0, X)
    with pytest.raises(TypeError, match=r"grad\(<lambda>\)\(\*args\): expected the function to return a scalar array, got a Python float"):
        fl.grad(lambda x: 1.0)(X)


def test_jvp_strict():
    with pytest.raises(ValueError, match=r"jvp\(<lambda>, primals, tangents\): strict=True: an output of f is independent of the inputs"):
        fl.jvp(lambda x: (x * 2, jnp.ones(2)), (X,), (X,), strict=True)
    out, t = fl.jvp(lambda x: (x * 2, jnp.ones(2)), (X,), (X,))
    assert_tree_allclose(t, (2 * X, jnp.zeros(2)))
    out, t = fl.jvp(lambda x: x * 2, (X,), (X,), strict=True)
    assert_tree_allclose(t, 2 * X)
    with pytest.raises(TypeError, match=r"jvp: expected strict to be True or False"):
        fl.jvp(jnp.sin, (X,), (X,), strict="yes")


def test_jvp_strict_like_torch():
    torch = pytest.importorskip("torch")
    with pytest.raises(RuntimeError, match="independent of the inputs"):
        torch.func.jvp(lambda x: torch.ones(2), (torch.ones(2),), (torch.ones(2),), strict=True)


def test_jvp_tangent_structure_and_arrayless_primals():
    with pytest.raises(ValueError, match=r"primals is a tuple but tangents is a list; tangents must have the same Python structure as primals"):
        fl.jvp(jnp.sin, (X,), [X])
    with pytest.raises(ValueError, match=r"jvp\(<lambda>, primals, tangents\): expected at least one array among the primals, got none"):
        fl.jvp(lambda p: jnp.ones(2), ({},), ({},))
    with pytest.raises(ValueError, match=r"vjp\(<lambda>, \*primals\): expected at least one array among the primals"):
        fl.vjp(lambda p: jnp.ones(2), {})


def test_argnums_list_rejected_with_torchs_message():
    for t in (fl.grad, fl.grad_and_value, fl.jacrev, fl.jacfwd, fl.hessian):
        with pytest.raises(TypeError, match=r"argnums must be int or Tuple\[int, \.\.\.\], got a list \[0, 1\]; pass argnums=\(0, 1\)"):
            t(lambda x, y: (x * y).sum(), argnums=[0, 1])


def test_argnums_list_rejected_by_torch_too():
    torch = pytest.importorskip("torch")
    with pytest.raises(RuntimeError, match=r"argnums must be int or Tuple\[int, \.\.\.\]"):
        torch.func.grad(lambda x, y: (x * y).sum(), argnums=[0, 1])(torch.ones(2), torch.ones(2))


def test_names_follow_torch():
    def loss(x):
        return x.sum()

    for t in (fl.grad, fl.grad_and_value, fl.value_and_grad, fl.jacrev, fl.jacfwd, fl.vmap):
        h = t(loss)
        assert h.__name__ == "loss" and "loss" in h.__qualname__ and h.__doc__
    assert fl.grad(loss).__qualname__ == "grad(loss)"
    assert fl.grad(fl.grad(jnp.sin)).__name__ == "sin"
    # messages of a transform on top still name the inner transform
    with pytest.raises(ValueError, match=r"grad\(grad\(loss\)\)\(\*args\)"):
        fl.grad(fl.grad(loss))(X)


def test_vjp_fn_accepts_torch_keywords_and_jacrev_preallocate():
    _, vjp_fn = fl.vjp(jnp.sin, X)
    a = vjp_fn(jnp.ones(3), retain_graph=True)
    b = vjp_fn(jnp.ones(3), retain_graph=False, create_graph=True)
    assert_tree_allclose(a, (jnp.cos(X),))
    assert_tree_allclose(b, (jnp.cos(X),))
    ref = jax.jacrev(jnp.sin)(X)
    for pre in (True, False):
        assert_tree_allclose(fl.jacrev(jnp.sin, chunk_size=2, _preallocate_and_copy=pre)(X), ref)


def test_no_positional_arguments_messages():
    """Issue 13 item 15: no more "use an index in [0, -1]"."""
    with pytest.raises(ValueError, match=r"grad\(<lambda>\)\(\*args\): the function was called with no positional arguments, so there is nothing to differentiate") as e:
        fl.grad(lambda: jnp.float32(1.0))()
    assert "[0, -1]" not in str(e.value)
    with pytest.raises(ValueError, match=r"vmap\(sin, in_dims=0\)\(\*args\): args\[0\] is a scalar \(shape \(\)\), which has no axis to map over") as e:
        fl.vmap(jnp.sin)(jnp.float32(1.0))
    assert "[0, -1]" not in str(e.value)


# ----------------------------------------------------------------------------- vmap


def test_vmap_in_axes_out_axes_aliases():
    A, v = jnp.ones((3, 2)), jnp.array([1.0, 2.0])
    assert_tree_allclose(fl.vmap(jnp.dot, in_axes=(0, None))(A, v), jnp.full(3, 3.0))
    assert fl.vmap(jnp.outer, in_axes=(0, None), out_axes=1)(A, v).shape == (2, 3, 2)
    with pytest.raises(TypeError, match=r"vmap: got both in_dims= and in_axes=; .*pass one of them"):
        fl.vmap(jnp.dot, in_dims=0, in_axes=0)
    with pytest.raises(TypeError, match=r"vmap: got both out_dims= and out_axes="):
        fl.vmap(jnp.dot, out_dims=0, out_axes=1)


@pytest.mark.parametrize("chunk_size", [None, 2])
def test_vmap_out_dims_none_on_a_batched_output(chunk_size):
    """Issue 13 item 7: the chunked form returned one chunk's element."""
    with pytest.raises(ValueError, match=r"vmap\(<lambda>, in_dims=0\)\(\*args\): out_dims=None for an output that depends on the mapped inputs") as e:
        fl.vmap(lambda x: x * 2, out_dims=None, chunk_size=chunk_size)(jnp.arange(5.0))
    assert "out_axes" not in str(e.value)
    # an unbatched output under None is fine, chunked or not
    out = fl.vmap(lambda x: (x * 2, jnp.ones(2)), out_dims=(0, None), chunk_size=chunk_size)(jnp.arange(5.0))
    assert_tree_allclose(out, (2 * jnp.arange(5.0), jnp.ones(2)))


@pytest.mark.parametrize("chunk_size", [None, 2])
def test_vmap_output_messages(chunk_size):
    with pytest.raises(ValueError, match=r"out_dims=3 is out of range for output, which has 2 dimension\(s\) with the batch axis \(shape \(2,\) per element\); use an axis in \[-2, 1\] or None"):
        fl.vmap(lambda x: x * 2, out_dims=3, chunk_size=chunk_size)(jnp.ones((5, 2)))
    with pytest.raises(TypeError, match=r"output\[1\] is a str, not an array; a vmapped function must return arrays"):
        fl.vmap(lambda x: (x, "label"), chunk_size=chunk_size)(jnp.ones(5))
    assert fl.vmap(lambda x: x * 2, out_dims=-2, chunk_size=chunk_size)(jnp.ones((5, 2))).shape == (5, 2)


# ----------------------------------------------------------------------------- jacobians: empties, messages


@pytest.mark.parametrize("chunk_size", [None, 2])
def test_empty_inputs_and_outputs_give_empty_jacobians(chunk_size):
    """Issue 13 item 13: ZeroDivisionError before."""
    J = fl.jacrev(lambda x: x.sum() * jnp.ones(2), chunk_size=chunk_size)(jnp.zeros(0))
    assert J.shape == (2, 0)
    J = fl.jacfwd(lambda x: x[:0], chunk_size=chunk_size)(X)
    assert J.shape == (0, 3)
    J = fl.jacrev(lambda x: (x[:0], x * 2), chunk_size=chunk_size)(X)
    assert J[0].shape == (0, 3)
    assert_tree_allclose(J[1], 2 * jnp.eye(3))
    J = fl.jacfwd(lambda x, y: x.sum() * y, argnums=(0, 1), chunk_size=chunk_size)(jnp.zeros(0), X)
    assert J[0].shape == (3, 0)
    assert_tree_allclose(J[1], jnp.zeros((3, 3)))


def test_hessian_diag_of_empty_input():
    d = fl.hessian_diag(lambda x: jnp.sum(x ** 3))(jnp.zeros(0))
    assert d.shape == (0,)
    d = fl.hessian_diag(lambda x: jnp.sum(x ** 3), method="hutchinson", key=jax.random.key(0))(jnp.zeros(0))
    assert d.shape == (0,)


def test_messages_name_the_transform_called():
    with pytest.raises(ValueError, match=r"jacrev\(<lambda>\)\(\*args\): expected f to return at least one array, got None"):
        fl.jacrev(lambda x: None)(X)
    for mode in ("rev", "fwd", "auto"):
        with pytest.raises(TypeError, match=r"jacobian\(<lambda>\)\(\*args\): the output is int32; only floating-point outputs"):
            fl.jacobian(lambda x: x.astype(jnp.int32), mode=mode)(X)
    for mode in ("auto", "rev-over-rev"):
        with pytest.raises(TypeError, match=r"hessian\(<lambda>\)\(\*args\): the output is int32"):
            fl.hessian(lambda x: x.astype(jnp.int32).sum(), mode=mode)(X)


# ----------------------------------------------------------------------------- PRNG keys


def test_typed_prng_keys_pass_through_every_transform():
    keys = jax.random.split(jax.random.key(0), 3)
    ours = fl.vmap(lambda k: jax.random.normal(k, ()))(keys)
    assert_tree_allclose(ours, jax.vmap(lambda k: jax.random.normal(k, ()))(keys))
    assert_tree_allclose(fl.vmap(lambda k: jax.random.normal(k, ()), chunk_size=2)(keys), ours)
    key = jax.random.key(1)
    noise = jax.random.normal(key, (3,))
    f = lambda x, k: jnp.sum(x * jax.random.normal(k, (3,)))
    assert_tree_allclose(fl.grad(f)(X, key), noise)
    g, aux = fl.grad(lambda x: (jnp.sum(x ** 2), key), has_aux=True)(X)
    assert jax.dtypes.issubdtype(aux.dtype, jax.dtypes.prng_key)
    assert_tree_allclose(fl.jacrev(f)(X, key), noise)
    assert_tree_allclose(fl.jacfwd(f)(X, key), noise)
    assert_tree_allclose(fl.hessian(f)(X, key), jnp.zeros((3, 3)))
    assert_tree_allclose(fl.vmap(fl.grad(f), in_dims=(None, 0))(X, keys),
                         jax.vmap(jax.grad(f), in_axes=(None, 0))(X, keys))
    # per-sample keys under a jit, as README's replacement for randomness="different"
    assert_tree_allclose(jax.jit(fl.vmap(lambda k: jax.random.normal(k, ())))(keys), ours)
    with pytest.raises(TypeError, match=r"grad\(<lambda>\)\(\*args\): args\[1\] is a PRNG key \(key<fry>\); keys cannot be differentiated"):
        fl.grad(f, argnums=1)(X, key)


# ----------------------------------------------------------------------------- custom_vjp under hvp, hessian_diag


@partial(custom_vjp, nondiff_argnums=(0,))
def fixed_point(f, a, x_guess):
    def cond_fun(carry):
        x_prev, x = carry
        return jnp.abs(x_prev - x) > 1e-6

    def body_fun(carry):
        _, x = carry
        return x, f(a, x)

    _, x_star = while_loop(cond_fun, body_fun, (x_guess, f(a, x_guess)))
    return x_star


def _fixed_point_fwd(f, a, x_init):
    x_star = fixed_point(f, a, x_init)
    return x_star, (a, x_star)


def _rev_iter(f, packed, u):
    a, x_star, x_star_bar = packed
    _, vjp_x = jax.vjp(partial(f, a), x_star)
    return x_star_bar + vjp_x(u)[0]


def _fixed_point_rev(f, res, x_star_bar):
    a, x_star = res
    _, vjp_a = jax.vjp(lambda a: f(a, x_star), a)
    a_bar, = vjp_a(fixed_point(partial(_rev_iter, f), (a, x_star, x_star_bar), x_star_bar))
    return a_bar, jnp.zeros_like(x_star)


fixed_point.defvjp(_fixed_point_fwd, _fixed_point_rev)


def newton_sqrt(a):
    """The JAX docs' custom_vjp fixed point; its backward calls another custom_vjp."""
    return fixed_point(lambda a, x: 0.5 * (x + a / x), a, a)


def test_hvp_falls_back_to_rev_over_rev_for_custom_vjp():
    with pytest.raises(TypeError, match="forward-mode"):
        jax.jvp(jax.grad(newton_sqrt), (2.0,), (1.0,))        # raw forward-over-reverse
    with pytest.warns(NestingFallbackWarning, match=r"hvp: forward-over-reverse cannot run this function .*falling back to reverse-over-reverse"):
        g, hv = fl.hvp(newton_sqrt, (2.0,), (1.0,))
    np.testing.assert_allclose(g, 0.5 * 2.0 ** -0.5, rtol=1e-5)
    np.testing.assert_allclose(hv, -0.25 * 2.0 ** -1.5, rtol=1e-5)


@pytest.mark.slow
def test_hessian_diag_falls_back_for_custom_vjp():
    x = jnp.array([2.0, 4.0, 9.0])
    f = lambda x: jnp.sum(jax.vmap(newton_sqrt)(x))
    for method, extra in (("exact", {}), ("hutchinson", {"key": jax.random.key(0), "num_samples": 3})):
        with pytest.warns(NestingFallbackWarning, match=r"hessian_diag: forward-over-reverse cannot run"):
            d = fl.hessian_diag(f, method=method, **extra)(x)
        np.testing.assert_allclose(d, -0.25 * x ** -1.5, rtol=1e-4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_allclose(fl.hessian(newton_sqrt)(2.0), -0.25 * 2.0 ** -1.5, rtol=1e-5)


def test_hvp_names_vhp_when_nothing_works():
    @jax.custom_vjp
    def once(x):
        return jnp.sin(x)

    def once_bwd(x, g):
        raise NotImplementedError("custom_vjp: no second derivative here")

    once.defvjp(lambda x: (jnp.sin(x), x), once_bwd)
    with pytest.raises(ValueError, match=r"hvp: neither forward-over-reverse \(.*\) nor reverse-over-reverse \(.*\) can differentiate this function twice\. .*call vhp directly or use hessian\(f, mode=\"rev-over-rev\"\)"):
        fl.hvp(lambda x: once(x) * 1.0, (1.0,), (1.0,))


# ----------------------------------------------------------------------------- porting


def test_functional_call_and_stack_module_state_pytrees():
    block = fl.nn.dense(3, 2)
    models = [block.init(jax.random.key(i)) for i in range(4)]
    params, buffers = fl.stack_module_state(models)
    assert buffers == {} and list(params) == list(models[0])
    assert params["w"].shape == (4, 3, 2)
    x = jax.random.normal(jax.random.key(9), (5, 3))
    out = fl.vmap(lambda p, b: fl.functional_call(block, (p, b), (x,)))(params, buffers)
    ref = jnp.stack([block.apply(m, x) for m in models])
    assert_tree_allclose(out, ref)
    # a plain apply function, one non-tuple argument, kwargs
    apply = lambda p, x, scale=1.0: (x @ p["w"] + p["b"][None, :]) * scale
    assert_tree_allclose(fl.functional_call(apply, models[0], x, {"scale": 2.0}), 2 * block.apply(models[0], x))
    with pytest.raises(ValueError, match=r"stack_module_state\(models\): models\[1\] has a different structure"):
        fl.stack_module_state([models[0], {"w": models[0]["w"]}])
    # a tuple of non-empty parts is the params pytree itself (not torch's pair)
    pair = lambda p, x: x @ p[0]["w"] + p[1]["b"][None, :]
    assert_tree_allclose(fl.functional_call(pair, ({"w": models[0]["w"]}, {"b": models[0]["b"]}), (x,)),
                         block.apply(models[0], x))
    with pytest.raises(TypeError, match=r"module must be an Equinox module, an object with an apply"):
        fl.functional_call(3, models[0], (x,))


@pytest.mark.slow
def test_functional_call_and_stack_module_state_equinox():
    eqx = pytest.importorskip("equinox")
    models = [eqx.nn.MLP(3, 2, 8, 2, key=jax.random.key(i)) for i in range(3)]
    params, buffers = fl.stack_module_state(models)
    base = models[0]
    x = jnp.ones(3)
    out = fl.vmap(lambda p: fl.functional_call(base, (p, buffers), (x,)))(params)
    assert_tree_allclose(out, jnp.stack([m(x) for m in models]))
    # the NTK tutorial's shape: jacrev of functional_call w.r.t. params
    p0 = eqx.filter(base, eqx.is_array)
    J = fl.jacrev(lambda p: fl.functional_call(base, p, (x,)))(p0)
    ref = eqx.filter_jacrev(lambda m: m(x))(base)
    assert_tree_allclose(eqx.filter(J, eqx.is_array), eqx.filter(ref, eqx.is_array), rtol=1e-5, atol=1e-6)


def test_porting_helpers_match_torch():
    torch = pytest.importorskip("torch")
    tmods = [torch.nn.Linear(3, 2).double() for _ in range(3)]
    tparams, tbuffers = torch.func.stack_module_state(tmods)
    x = np.random.default_rng(1).normal(size=(5, 3))
    base = torch.nn.Linear(3, 2).double().to("meta")
    theirs = torch.func.vmap(lambda p, b: torch.func.functional_call(base, (p, b), (torch.tensor(x),)))(tparams, tbuffers)
    apply = lambda p, x: x @ p["weight"].T + p["bias"][None, :]     # torch's weight is (out, in)
    with jax.enable_x64(True):
        models = [{k: jnp.asarray(v.detach().numpy()) for k, v in m.named_parameters()} for m in tmods]
        params, buffers = fl.stack_module_state(models)
        ours = fl.vmap(lambda p: fl.functional_call(apply, (p, buffers), (jnp.asarray(x),)))(params)
        np.testing.assert_allclose(np.asarray(ours), theirs.detach().numpy(), rtol=1e-12)


@jax.custom_vjp
def _cos_rule(x):
    return jnp.cos(x)


_cos_rule.defvjp(lambda x: (jnp.cos(x), x), lambda x, g: (-jnp.sin(x) * g,))


@jax.custom_vjp
def _sin_nested(x):
    """sin with a backward rule that calls another custom_vjp: no forward mode through it."""
    return jnp.sin(x)


_sin_nested.defvjp(lambda x: (jnp.sin(x), x), lambda x, g: (_cos_rule(x) * g,))


def test_hessian_diag_and_hvp_fall_back_fast():
    x = jnp.array([0.3, -1.2, 2.0])
    f = lambda x: jnp.sum(_sin_nested(x))
    with pytest.raises(TypeError, match="forward-mode"):
        jax.jvp(jax.grad(f), (x,), (x,))
    with pytest.warns(NestingFallbackWarning, match=r"hessian_diag: forward-over-reverse cannot run"):
        d = fl.hessian_diag(f, chunk_size=2)(x)
    assert_tree_allclose(d, -jnp.sin(x))
    with pytest.warns(NestingFallbackWarning, match=r"hvp: forward-over-reverse cannot run"):
        _, hv = fl.hvp(f, (x,), (jnp.ones(3),))
    assert_tree_allclose(hv, -jnp.sin(x))
