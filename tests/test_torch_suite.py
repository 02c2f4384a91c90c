"""A differential suite of torch.func's own test cases, run live against torch.func.

Ported from pytorch's ``test/functorch/test_eager_transforms.py`` (TestGradTransform,
TestVmapOfGrad, TestJac, TestHessian, TestJvp, TestLinearize and the ensembling /
functional_call cases): each case is written once against a small namespace ``S``
(``S.np`` is ``torch`` or ``jax.numpy``, ``S.f`` is ``torch.func`` or
``functorch_lite``) and run on both sides; the results must agree in value (float64)
*and* in Python structure (tuple vs list, dict key order). Error cases assert that both
libraries raise (torch's exception and message, ours with its own message). Cases
whose subject does not exist in JAX (in-place mutation, ``no_grad`` modes, dispatch
keys, ``autograd.Function`` internals, tensor printing) are left out; where torch's
case uses in-place ops or ``no_grad`` for a *mathematical* point, the functional
spelling is ported (``stop_gradient`` for ``no_grad``/``detach``, ``where`` for masked
assignment).

Deliberate differences, each asserted where it matters: functorch_lite's ``jvp``
accepts Python numbers among the primals (JAX's convention; torch requires tensors).
"""

from __future__ import annotations

from functools import partial
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

import functorch_lite as fl  # noqa: E402

T = SimpleNamespace(
    name="torch", np=torch, f=torch.func,
    arr=lambda a: torch.tensor(np.asarray(a)),
    sg=lambda x: x.detach(),
    log_softmax=lambda x: torch.log_softmax(x, dim=-1),
    relu=torch.relu,
    diagflat=torch.diagflat,
    take=torch.take,
    where=torch.where,
    cross_entropy=F.cross_entropy,
    concat=torch.cat,
    autograd_jacobian=lambda f, x: torch.autograd.functional.jacobian(f, x),
)
J = SimpleNamespace(
    name="jax", np=jnp, f=fl,
    arr=lambda a: jnp.asarray(a),
    sg=jax.lax.stop_gradient,
    log_softmax=lambda x: jax.nn.log_softmax(x, axis=-1),
    relu=jax.nn.relu,
    diagflat=lambda x: jnp.diag(jnp.ravel(x)),
    take=jnp.take,
    where=jnp.where,
    cross_entropy=lambda y, t: -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(y, axis=-1), t[:, None], axis=1)),
    concat=jnp.concatenate,
)

RNG = np.random.default_rng(0)


def rand(*shape):
    return RNG.normal(size=shape)


@pytest.fixture(autouse=True)
def _x64():
    with jax.enable_x64(True):
        yield


def to_py(tree):
    """torch/jax results as nested Python containers of numpy arrays, keeping
    container types and dict order."""
    if isinstance(tree, dict):
        return {k: to_py(v) for k, v in tree.items()}
    if isinstance(tree, tuple):
        return tuple(to_py(v) for v in tree)
    if isinstance(tree, list):
        return [to_py(v) for v in tree]
    if isinstance(tree, torch.Tensor):
        return tree.detach().resolve_conj().resolve_neg().numpy()
    return np.asarray(tree)


def assert_same(ours, theirs, path="result"):
    if isinstance(theirs, dict):
        assert isinstance(ours, dict), (path, type(ours))
        assert list(ours) == list(theirs), (path, list(ours), list(theirs))
        for k in theirs:
            assert_same(ours[k], theirs[k], f"{path}[{k!r}]")
    elif isinstance(theirs, (tuple, list)):
        assert type(ours) is type(theirs), (path, type(ours), type(theirs))
        assert len(ours) == len(theirs), (path, len(ours), len(theirs))
        for i, (a, b) in enumerate(zip(ours, theirs)):
            assert_same(a, b, f"{path}[{i}]")
    else:
        assert np.shape(ours) == np.shape(theirs), (path, np.shape(ours), np.shape(theirs))
        np.testing.assert_allclose(ours, theirs, rtol=1e-10, atol=1e-12, err_msg=path)


def run_both(case, *inputs):
    """``case(S, *arrays)`` on both sides; the numpy ``inputs`` converted per side."""
    theirs = to_py(case(T, *[T.arr(a) for a in inputs]))
    ours = to_py(case(J, *[J.arr(a) for a in inputs]))
    assert_same(ours, theirs)
    return ours


# ============================================================================ TestGradTransform

GRAD_CASES = {
    "primitive": (lambda S, x: S.f.grad(S.np.sin)(x), [rand()]),
    "composite_simple": (lambda S, x: S.f.grad(lambda x: S.np.sum(S.np.ravel(x) if S is J else torch.flatten(x)))(x), [rand(2, 3, 4)]),
    "fn_with_kwargs": (lambda S, x, y: (S.f.grad(lambda x, y: (x * y).sum())(x, y=y), S.f.grad(lambda x, y: (x * y).sum())(x, y)), [rand(3), rand(3)]),
    "composite_complicated": (lambda S, x, y: S.f.grad(lambda x, y: (x @ y).sum())(x, y), [rand(3), rand(3, 5)]),
    "nesting_simple": (lambda S, x: S.f.grad(S.f.grad(S.np.sin))(x), [rand()]),
    "vjp": (lambda S, x, v: S.f.vjp(S.np.sin, x)[1](v), [rand(), rand()]),
    "vjp_two_outputs": (lambda S, x: (lambda r: r[1](r[0]))(S.f.vjp(lambda x: (x, x), x)), [np.array(1.0)]),
    "conj_bit": (lambda S, x: S.f.grad(lambda x: S.np.abs(S.np.conj(x)))(x), [np.array(1 + 1j)]),
    "grad_of_vjp_composition": (lambda S, x, y: S.f.grad(lambda y: S.f.vjp(S.np.sin, x)[1](y)[0])(y), [rand(), rand()]),
    "vjp_of_grad_composition": (lambda S, x, y: S.f.vjp(S.f.grad(S.np.sin), x)[1](y)[0], [rand(), rand()]),
    "grad_of_vjp_of_grad_composition": (
        lambda S, x, y: S.f.grad(lambda y: S.f.vjp(S.f.grad(lambda x: -S.np.cos(x)), x)[1](y)[0])(y), [rand(), rand()]),
    "argnums": (lambda S, x, y: (S.f.grad(S.np.mul if S is T else jnp.multiply, argnums=0)(x, y),
                                 S.f.grad(lambda x, y: x * y, argnums=1)(x, y),
                                 S.f.grad(lambda x, y: x * y, argnums=(0,))(x, y),
                                 S.f.grad(lambda x, y: x * y, argnums=(0, 1))(x, y)), [rand(), rand()]),
    "out_of_order_argnums": (lambda S, x, y: S.f.grad(lambda x, y: x * y, argnums=(1, 0))(x, y), [rand(), rand()]),
    "negative_argnums": (lambda S, x, y: (S.f.grad(lambda x, y: x * y, argnums=-2)(x, y),
                                          S.f.grad(lambda x, y: x * y, argnums=-1)(x, y),
                                          S.f.grad(lambda x, y: x * y, argnums=(-2,))(x, y),
                                          S.f.grad(lambda x, y: x * y, argnums=(-2, -1))(x, y)), [rand(), rand()]),
    "grad_pytree_inputs": (lambda S, x: (lambda f, args: (S.f.grad(f)(*args), S.f.grad(f, argnums=(0,))(*args),
                                                          S.f.grad(f, argnums=(0, 1))(*args)))(
        lambda a, b: 1 * a[0] + 2 * a[1] + 3 * b["foo"], ((x, x), {"foo": x})), [rand()]),
    "grad_aux_tensor": (lambda S, x: S.f.grad(lambda t: (S.np.sin(t).sum(), S.np.cos(t)), has_aux=True)(x), [rand(3)]),
    "grad_aux_pytree": (lambda S, x: S.f.grad(lambda x: (S.np.sin(x).sum(), {"a": S.np.cos(x), "b": [S.np.tan(x)]}), has_aux=True)(x), [rand(3)]),
    "zero_grad": (lambda S, a, b: S.f.grad(lambda p: (p["a"] ** 2.0).sum())({"a": a, "b": b}), [rand(10) + 3, rand(10)]),
    "unrelated_grad": (lambda S, x, y: S.f.grad(lambda x: y * 1.0)(x), [np.array(1.0), np.array(2.0)]),
    "unrelated_vjp": (lambda S, x, y, v: S.f.vjp(lambda x: y * 1.0, x)[1](v), [np.array(1.0), np.array(2.0), np.array(1.0)]),
    "unrelated_vjp_multiple_inputs_outputs": (
        lambda S, w, x, y, v: S.f.vjp(lambda w, x: (y * 1.0, y * 1.0, x), w, x)[1]((v, v, v)),
        [np.array(3.0), np.array(4.0), np.array(2.0), np.array(1.0)]),
    "unrelated_hessian": (lambda S, W, x: S.f.jacrev(S.f.jacrev(lambda x: W @ x))(x), [rand(5, 3), rand(3)]),
    "vjp_pytree_input": (lambda S, x, v: (lambda r: (r[0], r[1](v)))(S.f.vjp(lambda x: x[0] * x[1][0], (x, (x, x)))), [rand(), rand()]),
    "vjp_pytree_output": (lambda S, x, v1, v2, v3: S.f.vjp(lambda x: (x, (x, x)), x)[1]((v1, (v2, v3))), [rand(), rand(), rand(), rand()]),
    "vjp_list_output": (lambda S, x, t: (lambda r: (r[0], r[1]([t, t.sum()])))(S.f.vjp(lambda x: [x, x.sum()], x)), [rand(2, 3), rand(2, 3)]),
    "vjp_dict_output": (lambda S, x, t: (lambda r: (r[0], r[1]({"x": t, "xsum": t.sum()})))(S.f.vjp(lambda x: {"x": x, "xsum": x.sum()}, x)), [rand(2, 3), rand(2, 3)]),
    "vjp_composite_output": (lambda S, x, t: (lambda r: (r[0], r[1]([(t.sum(), {"a": t, "out": [t, t.sum()]})])))(
        S.f.vjp(lambda x: [(x.sum(), {"a": x, "out": [x, x.sum()]})], x)), [rand(2, 3), rand(2, 3)]),
    "vjp_aux_tensor": (lambda S, x, v: (lambda r: (r[0], r[2], r[1](v)))(S.f.vjp(lambda t: (S.np.sin(t), S.np.cos(t)), x, has_aux=True)), [rand(3), rand(3)]),
    "vjp_aux_pytree": (lambda S, x, v: (lambda r: (r[0], r[2], r[1](v)))(
        S.f.vjp(lambda x: (S.np.sin(x), {"a": S.np.cos(x), "b": [S.np.tan(x)]}), x, has_aux=True)), [rand(3), rand(3)]),
    "advanced_indexing": (lambda S, x: S.f.grad(lambda v: S.where(v > 0, 0.0, v).sum())(x), [rand(100)]),
    "tensor_ctor_inside_grad": (lambda S, x: S.f.grad(lambda x: x * S.arr(2.0))(x), [np.array(3.14)]),
    "no_grad_inside": (lambda S, x: (S.f.grad(lambda x: x ** 2 - S.sg(x ** 2))(x),
                                     S.f.grad(S.f.grad(lambda x: x ** 2 - S.sg(x ** 2)))(x)), [rand()]),
    "no_grad_nested_simple": (lambda S, x: S.f.grad(lambda x: x ** 3 - S.sg(S.f.grad(lambda x: 0.25 * x ** 4)(x)))(x), [np.array(1.5)]),
    "no_grad_nested_complicated": (lambda S, x: S.f.grad(
        lambda x: S.f.grad(lambda x: x ** 3 - S.sg(x ** 3))(x) - S.sg(S.f.grad(lambda x: x ** 3 - S.sg(x ** 3))(x)))(x), [rand()]),
    "no_grad_value": (lambda S, x: S.f.grad(lambda x: x ** 3 - S.sg(S.f.grad_and_value(lambda x: x ** 3)(x)[1]))(x), [np.array(1.6)]),
    "grad_and_value": (lambda S, x: S.f.grad_and_value(lambda x: (S.np.sin(x) * x).sum())(x), [rand(4)]),
    "grad_and_value_aux": (lambda S, x: S.f.grad_and_value(lambda x: ((S.np.sin(x) * x).sum(), {"k": x * 2}), has_aux=True)(x), [rand(4)]),
    "composite_two_ops": (lambda S, y: S.f.grad(lambda y: S.cross_entropy(y, S.arr(np.array([1, 3]))))(y), [rand(2, 5)]),
    "inference_mode_jacrev_grad": (lambda S, x: S.f.jacrev(S.f.grad(lambda x: (x ** 3).sum()))(x), [rand(3)]),
    "inference_mode_grad_vmap": (lambda S, x: S.f.grad(lambda x: S.f.vmap(lambda x: (x ** 2).sum())(x).sum())(x), [rand(3)]),
}


@pytest.mark.parametrize("name", list(GRAD_CASES))
def test_grad_transform(name):
    case, inputs = GRAD_CASES[name]
    run_both(case, *inputs)


def _raise_both(case, torch_exc, torch_match, our_exc, our_match):
    with pytest.raises(torch_exc, match=torch_match):
        case(T)
    with pytest.raises(our_exc, match=our_match):
        case(J)


GRAD_ERRORS = {
    "argnums_out_of_range_neg": (lambda S: S.f.grad(lambda x, y: x * y, argnums=-3)(S.arr(1.0), S.arr(2.0)),
                                 RuntimeError, "but only", ValueError, r"argnums=-3 is out of range"),
    "argnums_out_of_range": (lambda S: S.f.grad(lambda x, y: x * y, argnums=2)(S.arr(1.0), S.arr(2.0)),
                             RuntimeError, "but only", ValueError, r"argnums=2 is out of range"),
    "argnums_list": (lambda S: S.f.grad(lambda x, y: x * y, argnums=[0])(S.arr(1.0), S.arr(2.0)),
                     RuntimeError, "int or Tuple", TypeError, r"argnums must be int or Tuple\[int, \.\.\.\]"),
    "argnums_str": (lambda S: S.f.grad(lambda x, y: x * y, argnums=("0",))(S.arr(1.0), S.arr(2.0)),
                    RuntimeError, "must be int", TypeError, r"contains '0', which is not an integer"),
    "argnums_repeat": (lambda S: S.f.grad(lambda x, y: x * y, argnums=(0, 0))(S.arr(1.0), S.arr(2.0)),
                       RuntimeError, "must be unique", ValueError, r"names the same argument twice"),
    "argnums_repeat_neg": (lambda S: S.f.grad(lambda x, y: x * y, argnums=(0, -2))(S.arr(1.0), S.arr(2.0)),
                           RuntimeError, "must be unique", ValueError, r"names the same argument twice"),
    "aux_list": (lambda S: S.f.grad(lambda t: [t.sum(), t], has_aux=True)(S.arr(rand(3))),
                 RuntimeError, "should be a tuple", ValueError, r"grad\(<lambda>\)\(\*args\): has_aux=True expects the function to return a tuple"),
    "aux_triple": (lambda S: S.f.grad(lambda t: (t.sum(), t + 2, t + 3), has_aux=True)(S.arr(rand(3))),
                   RuntimeError, "should be a tuple", ValueError, r"got a tuple of length 3"),
    "vjp_aux_list": (lambda S: S.f.vjp(lambda t: [t, t], S.arr(rand(3)), has_aux=True),
                     RuntimeError, "should be a tuple", ValueError, r"vjp\(<lambda>, \*primals\): has_aux=True expects the function to return a tuple"),
    "vjp_pytree_error": (lambda S: (lambda r: r[1](((S.arr(1.0), (S.arr(1.0), S.arr(1.0))),)))(S.f.vjp(lambda x: (x, (x, x)), S.arr(1.0))),
                         RuntimeError, "Expected pytree structure", ValueError, r"cotangents must have the same structure as the output"),
}
for _name, _aux in (("int", 1), ("float", 1.0), ("str", "abc")):
    for _side, _wrap in (("bare", lambda x, a: a), ("in_list", lambda x, a: [x, a])):
        GRAD_ERRORS[f"grad_aux_{_name}_{_side}"] = (
            lambda S, a=_aux, w=_wrap: S.f.grad(lambda x: (x.sum(), w(x, a)), has_aux=True)(S.arr(rand(3))),
            RuntimeError, "Expected tensors, got unsupported type", TypeError, rf"aux.* is a {_name}, not an array")
        GRAD_ERRORS[f"vjp_aux_{_name}_{_side}"] = (
            lambda S, a=_aux, w=_wrap: S.f.vjp(lambda x: (x, w(x, a)), S.arr(rand(3)), has_aux=True),
            RuntimeError, "Expected tensors, got unsupported type", TypeError, rf"aux.* is a {_name}, not an array")
for _out in (None, ()):
    GRAD_ERRORS[f"vjp_empty_output_{_out!r}"] = (
        lambda S, o=_out: S.f.vjp(lambda _: o, S.arr(rand(2, 3)))[1](S.arr(rand(2, 3))),
        RuntimeError, "non-empty output", ValueError, r"vjp\(<lambda>, \*primals\): expected f to return at least one array")
for _out, _kind in ((1, "int"), (True, "bool"), (12.2, "float"), ("abc", "str")):
    GRAD_ERRORS[f"vjp_non_tensor_output_{_kind}"] = (
        lambda S, o=_out: S.f.vjp(lambda _: o, S.arr(rand(2, 3)))[1](S.arr(rand(2, 3))),
        RuntimeError, "to return only tensors", TypeError, r"vjp\(<lambda>, \*primals\): the output")


@pytest.mark.parametrize("name", list(GRAD_ERRORS))
def test_grad_transform_errors(name):
    _raise_both(*GRAD_ERRORS[name])


# ============================================================================ TestVmapOfGrad

VMAP_GRAD_CASES = {
    "per_sample_grads_simple": (
        lambda S, w, x, t: S.f.vmap(partial(S.f.grad(lambda w, x, t: (((x @ w) - t) ** 2).sum()), w))(x, t),
        [rand(16, 2), rand(64, 16), rand(64, 2)]),
    "log_softmax": (lambda S, x, v: S.f.vmap(lambda x, v: S.f.vjp(S.log_softmax, x)[1](v)[0], (0, None))(x, v), [rand(3, 5), rand(5)]),
    "new_zeros_materializes_tensor": (lambda S, y, x: S.f.vmap(S.f.grad(lambda y, x: (S.np.zeros(5, dtype=y.dtype) + y).sum()))(y, x), [rand(3, 5), rand(3)]),
    "per_sample_grads_dict": (
        lambda S, w, b, x: S.f.vmap(S.f.grad(lambda p, x: S.np.tanh(x @ p["w"] + p["b"]).sum()), in_dims=(None, 0))({"w": w, "b": b}, x),
        [rand(4, 2), rand(2), rand(8, 4)]),
    "vmap_in_dims_out_dims": (lambda S, x, w: S.f.vmap(lambda r, w: S.np.outer(r * w, w), in_dims=(1, None), out_dims=2)(x, w), [rand(3, 6), rand(3)]),
    "vmap_chunked": (lambda S, x, w: S.f.vmap(lambda r, w: S.np.outer(r * w, w), in_dims=(1, None), out_dims=1, chunk_size=4)(x, w), [rand(3, 6), rand(3)]),
    "vmap_dict_output": (lambda S, x: S.f.vmap(lambda x: {"b": x * 2, "a": (x, x.sum())})(x), [rand(4, 3)]),
    "vmap_out_dims_none": (lambda S, x, y: S.f.vmap(lambda x: (x * 2, y * 1.0), out_dims=(0, None))(x), [rand(4), rand(2)]),
}


@pytest.mark.parametrize("name", list(VMAP_GRAD_CASES))
def test_vmap_of_grad(name):
    case, inputs = VMAP_GRAD_CASES[name]
    run_both(case, *inputs)


# ============================================================================ TestJac (jacrev and jacfwd)


def _take(S, x):
    return S.take(x, S.arr(np.ones(3, dtype=np.int64)))


def _composite(x):
    out = x.sum()
    return [(out, {"a": x, "out": [x, out]})]


JAC_CASES = {
    "simple": (lambda S, jac, x: jac(S.np.sin)(x), [rand(3)]),
    "simple_not_flat": (lambda S, jac, x: jac(S.np.sin)(x), [rand(2, 3)]),
    "take": (lambda S, jac, x: jac(partial(_take, S))(x), [rand(5)]),
    "diff_numel": (lambda S, jac, x: jac(lambda x: x[0, 1:][:, None])(x), [rand(2, 4)]),
    "vmap_on_jac_simple": (lambda S, jac, x: S.f.vmap(jac(S.np.sin))(x), [rand(2, 3)]),
    "nested_jac_simple": (lambda S, jac, x: jac(jac(lambda x: S.np.sin(x).sum()))(x), [rand(3)]),
    "multiple_args": (lambda S, jac, x, y: jac(lambda x, y: x * y, argnums=1)(x, y), [rand(3), rand(3)]),
    "multiple_outputs_multiple_argnums": (lambda S, jac, x, y: jac(lambda x, y: (2 * x + 3 * y, 4 * x + 5 * y), argnums=(0, 1))(x, y), [rand(3), rand(3)]),
    "multiple_outputs_single_argnums": (lambda S, jac, x, y: (jac(lambda x, y: (2 * x + 3 * y, 4 * x + 5 * y), argnums=0)(x, y),
                                                               jac(lambda x, y: (2 * x + 3 * y, 4 * x + 5 * y), argnums=(0,))(x, y)), [rand(3), rand(3)]),
    "multiple_outputs_pytree": (lambda S, jac, x, y: jac(lambda x, y: {"left": 2 * x + 3 * y, "right": 4 * x + 5 * y}, argnums=(0, 1))(x, y), [rand(3), rand(3)]),
    "multiple_inputs_pytree": (lambda S, jac, x: (lambda f, a: (jac(f, argnums=(0, 1, 2))(*a), jac(f, argnums=(0,))(*a), jac(f)(*a)))(
        lambda a, b, c: a[0] + a[1] * 2 + b * 3 + c * 4, ((x, x), x, x)), [rand()]),
    "dimensionality": (lambda S, jac, x, y: (jac(lambda x: x)(x), jac(lambda x: x)(y)), [rand(), rand(1)]),
    "aux_tensor": (lambda S, jac, x: jac(lambda x: (x * 1.0, S.np.cos(x)), has_aux=True)(x), [rand(3)]),
    "aux_pytree": (lambda S, jac, x: jac(lambda x: (x * 1.0, {"a": S.np.cos(x), "b": [S.np.tan(x)]}), has_aux=True)(x), [rand(3)]),
    "list_output": (lambda S, jac, x: jac(lambda x: [x, x.sum()])(x), [rand(2, 3)]),
    "dict_output": (lambda S, jac, x: jac(lambda x: {"x": x, "xsum": x.sum()})(x), [rand(2, 3)]),
    "composite_output": (lambda S, jac, x: jac(_composite)(x), [rand(2, 3)]),
    "multiple_inputs_outputs_pytree": (lambda S, jac, x: (lambda f, a: (jac(f)(*a), jac(f, argnums=(0,))(*a), jac(f, argnums=(0, 1))(*a)))(
        lambda a, b, c: (a[0] + a[1] * 2, {"foo": b * 3 + c * 4}), ((x, x), x, x)), [rand()]),
    "multiple_inputs_outputs_pytree_multidim": (lambda S, jac, x: jac(lambda d: {"c": S.np.sin(d["a"]), "d": S.np.cos(d["b"])})({"a": x, "b": x}), [rand(3)]),
    "dict_order_kept": (lambda S, jac, w, b: jac(lambda d: {"z": d["w"] * d["b"], "a": d["w"] ** 2})({"w": w, "b": b}), [rand(2), rand(2)]),
    "unrelated_input": (lambda S, jac, x, y: jac(lambda x, y: x * 1.0, argnums=(0, 1))(x, y), [rand(2, 3), rand(2, 3)]),
    "unrelated_output": (lambda S, jac, x, y: jac(lambda x: y * 1.0)(x), [rand(2, 3), rand(2, 3)]),
    "argnums_tuple": (lambda S, jac, x, y: jac(lambda x, y: x * y, argnums=(0, 1))(x, y), [rand(3), rand(3)]),
    "argnums_effect_on_return": (lambda S, jac, x, y: (jac(lambda x, y: x * y, argnums=(0,))(x, y), jac(lambda x, y: x * y, argnums=0)(x, y)), [rand(3), rand(3)]),
    "argnums_defaults_to_zero": (lambda S, jac, x, y: jac(lambda x, y: x * 2 + y * 3)(x, y), [rand(3), rand(3)]),
    "against_reference_simple": (lambda S, jac, x: jac(lambda i: 3 * i[0] ** 2)((x,)), [rand(2, 3, 5)]),
    "against_reference_multi_input": (lambda S, jac, x, y: jac(lambda i: (S.np.cos(i[0]) * i[0]) @ S.np.sin(i[1]))((x, y)), [rand(2, 3), rand(3, 5)]),
    "against_reference_multi_input_multi_output": (
        lambda S, jac, x, y: jac(lambda i: ((i[0] * i[0]) @ i[1], i[0] @ (i[0].sum(1)[None, :] * i[1]), i[1].sum()))((x, y)), [rand(5, 3), rand(3, 5)]),
    "against_reference_unrelated_outputs": (lambda S, jac, x, y: jac(lambda i: (i[0] * 1.0, i[1] * 1.0, i[0] * 1.0, i[1] * 1.0))((x, y)), [rand(2), rand(3)]),
    "against_reference_zero_dim_out": (lambda S, jac, x, y: jac(lambda i: (i[0].sum(), i[1].sum(), i[0] * i[1]))((x, y)), [rand(3), rand(3)]),
    "against_reference_zero_dim_in": (lambda S, jac, x: jac(lambda i: S.np.stack([i[0], i[0], i[0]]))((x,)), [rand()]),
    "against_reference_mixed_zero_dim": (lambda S, jac, x, y: jac(lambda i: (i[1].sum(), i[0] * i[1]))((x, y)), [rand(), rand(1)]),
    "against_reference_default_arg": (lambda S, jac, x, y: jac(lambda i, z=3.0: i[0] * i[1] * z)((x, y)), [rand(3), rand(3)]),
    "jac_with_non_tensor_args": (lambda S, jac, t: jac(lambda t, int_x: t + int_x)(t, 3), [rand(3, 3)]),
}


@pytest.mark.filterwarnings("ignore:There is a performance drop:UserWarning")   # torch's take fallback
@pytest.mark.parametrize("name", list(JAC_CASES))
@pytest.mark.parametrize("api", ["jacrev", "jacfwd"])
def test_jac(api, name):
    case, inputs = JAC_CASES[name]
    theirs = to_py(case(T, getattr(T.f, api), *[T.arr(a) for a in inputs]))
    ours = to_py(case(J, getattr(J.f, api), *[J.arr(a) for a in inputs]))
    assert_same(ours, theirs)


def _jac_errors():
    cases = {
        "empty_output": (lambda S, jac: jac(lambda x, y: ())(S.arr(rand(3)), S.arr(rand(3))),
                         RuntimeError, "xpected", ValueError, r"expected f to return at least one array"),
        "empty_argnums": (lambda S, jac: jac(lambda x: S.np.sin(x), argnums=())(S.arr(rand(3))),
                          RuntimeError, "must be non-empty", ValueError, r"argnums=\(\) is empty"),
        "out_of_bounds_argnums": (lambda S, jac: jac(lambda x: S.np.sin(x), argnums=2)(S.arr(rand(3))),
                                  RuntimeError, "only 1 positional inputs", ValueError, r"argnums=2 is out of range for a function called with 1 positional argument"),
        "negative_argnums": (lambda S, jac: jac(lambda x: S.np.sin(x), argnums=-2)(S.arr(rand(3))),
                             RuntimeError, "only 1 positional inputs", ValueError, r"argnums=-2 is out of range"),
        "repeated_argnums": (lambda S, jac: jac(lambda x: S.np.sin(x), argnums=(0, 0))(S.arr(rand(3))),
                             RuntimeError, "must be unique", ValueError, r"names the same argument twice"),
        "float_argnums": (lambda S, jac: jac(lambda x: S.np.sin(x), argnums=0.0)(S.arr(rand(3))),
                          RuntimeError, "must be int or Tuple", TypeError, r"argnums=0.0 is not an integer"),
        "float_in_argnums_tuple": (lambda S, jac: jac(lambda x, y: x * y, argnums=(1, 0.0))(S.arr(rand(3)), S.arr(rand(3))),
                                   RuntimeError, "must be int", TypeError, r"contains 0.0, which is not an integer"),
        "complex_input": (lambda S, jac: jac(lambda x: S.np.conj(x))(S.arr(rand(1) + 0j)),
                          RuntimeError, r"Expected all inputs", TypeError, r"args\[0\] is complex128; jac(rev|fwd) differentiates real inputs"),
        "complex_output": (lambda S, jac: jac(lambda x: S.np.conj(x * 0.5j))(S.arr(rand(1))),
                           RuntimeError, r"Expected all outputs", TypeError, r"the output is complex128; jac(rev|fwd) differentiates real outputs"),
    }
    for out in (None, ()):
        cases[f"empty_pytree_output_{out!r}"] = (
            lambda S, jac, o=out: jac(lambda _: o)(S.arr(rand(2, 3))),
            RuntimeError, r"(vjp|jvp).+: Expected f to be a function that has non-empty output",
            ValueError, r"jac(rev|fwd)\(<lambda>\)\(\*args\): expected f to return at least one array")
    for out, kind in ((1, "int"), (True, "bool"), (12.2, "float"), ("abc", "str")):
        cases[f"non_tensor_output_{kind}"] = (
            lambda S, jac, o=out: jac(lambda _: o)(S.arr(rand(2, 3))),
            RuntimeError, r"(vjp|jvp).+: expected f\(\*primals\) to return only tensors",
            TypeError, r"jac(rev|fwd)\(<lambda>\)\(\*args\): the output is")
    for name, aux in (("int", 1), ("float", 1.0), ("str", "abc")):
        cases[f"aux_{name}"] = (lambda S, jac, a=aux: jac(lambda x: (x * 1.0, [x, a]), has_aux=True)(S.arr(rand(3))),
                                RuntimeError, "Expected tensors, got unsupported type", TypeError, rf"aux\[1\] is a {name}, not an array")
    return cases


JAC_ERRORS = _jac_errors()


@pytest.mark.parametrize("name", list(JAC_ERRORS))
@pytest.mark.parametrize("api", ["jacrev", "jacfwd"])
def test_jac_errors(api, name):
    case, te, tm, oe, om = JAC_ERRORS[name]
    with pytest.raises(te, match=tm):
        case(T, getattr(T.f, api))
    with pytest.raises(oe, match=om):
        case(J, getattr(J.f, api))


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 4, 7, 10, 1000])
@pytest.mark.parametrize("preallocate", [True, False])
def test_chunk_jacrev(chunk_size, preallocate):
    def case(S, x, y):
        f = lambda x, y: ((S.np.sin(x), x + y), (x + 2, x.sum()))
        expected = S.f.jacrev(f, argnums=(0, 1))(x, y)
        actual = S.f.jacrev(f, argnums=(0, 1), chunk_size=chunk_size, _preallocate_and_copy=preallocate)(x, y)
        return expected, actual

    ours = run_both(case, rand(10, 2), rand(1, 2))
    assert_same(ours[0], ours[1])


@pytest.mark.parametrize("chunk_size", [0, -2])
def test_chunk_jacrev_bad_chunk_size(chunk_size):
    x = rand(10, 2)
    with pytest.raises(ValueError, match="jacrev: `chunk_size` should be greater than 0"):
        torch.func.jacrev(lambda x: x, chunk_size=chunk_size)(torch.tensor(x))
    with pytest.raises(ValueError, match=rf"jacrev: chunk_size must be a positive int or None, got {chunk_size}"):
        fl.jacrev(lambda x: x, chunk_size=chunk_size)(jnp.asarray(x))


@pytest.mark.slow
@pytest.mark.parametrize("preallocate", [True, False])
def test_chunk_jacrev_composition(preallocate):
    def case(S, x):
        f = lambda x: ((S.np.sin(x), x * 1.0), (x + 2, x.sum()))
        return S.f.vmap(S.f.jacrev(S.f.jacrev(f, chunk_size=3, _preallocate_and_copy=preallocate), chunk_size=3))(x)

    run_both(case, rand(10, 2))


# ============================================================================ TestHessian

HESSIAN_CASES = {
    "hessian_simple_vector_output": (lambda S, x: S.f.hessian(S.np.sin)(x), [rand(3)]),
    "vectorize_correctness_simple": (lambda S, x: S.f.hessian(lambda i: (3 * i[0] ** 2).sum())((x,)), [rand(2, 3, 5)]),
    "vectorize_correctness_multi_input": (lambda S, x, y, z: S.f.hessian(lambda i: ((S.relu(i[0]) * i[0]) @ S.np.sin(i[1]) @ i[2]).sum())((x, y, z)),
                                          [rand(2, 3), rand(3, 5), rand(5, 5)]),
    "unrelated_outputs_one": (lambda S, x, y: S.f.hessian(lambda i: (i[0] ** 2).sum())((x, y)), [rand(2), rand(3)]),
    "unrelated_outputs_all": (lambda S, x, y: S.f.hessian(lambda i: S.np.ones([], dtype=i[0].dtype))((x, y)), [rand(2), rand(3)]),
    "jacfwd_different_levels": (
        lambda S, A, x1: (lambda loss: (S.f.vmap(S.f.jacrev(S.f.jacrev(loss)))(A, x1, x1), S.f.vmap(S.f.hessian(loss))(A, x1, x1)))(
            lambda A, x1, x2: ((x2 - (A @ x1.T).T) ** 2).sum()),
        [0.1 * rand(8, 2, 2), rand(8, 10, 2)]),
    "argnums_tuple": (lambda S, x, y: S.f.hessian(lambda x, y: (S.np.sin(x) * y ** 2).sum(), argnums=(0, 1))(x, y), [rand(3), rand(3)]),
    "dict_input": (lambda S, w, b: S.f.hessian(lambda p: (p["w"] ** 2 * p["b"]).sum())({"w": w, "b": b}), [rand(2), rand(2)]),
}


SLOW_HESSIANS = {"vectorize_correctness_multi_input", "jacfwd_different_levels"}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_HESSIANS else n
                                  for n in HESSIAN_CASES])
def test_hessian(name):
    case, inputs = HESSIAN_CASES[name]
    run_both(case, *inputs)


# ============================================================================ TestJvp

JVP_CASES = {
    "simple": (lambda S, x, t: S.f.jvp(S.np.sin, (x,), (t,)), [rand(2, 3), rand(2, 3)]),
    "multiple_inputs": (lambda S, x, y, tx, ty: S.f.jvp(lambda x, y: x * y, (x, y), (tx, ty)), [rand(2, 3)] * 4),
    "pytree_inputs": (lambda S, one: S.f.jvp(lambda x, y, z: x[0] + 2 * x[1] + 3 * y + 4 * z, ((one, one), one, one), ((one, one), one, one)), [np.array(1.0)]),
    "unrelated_input": (lambda S, x, y, tx, ty: S.f.jvp(lambda x, y: x * 1.0, (x, y), (tx, ty)), [rand(2, 3)] * 4),
    "unrelated_output": (lambda S, y, x, tx: S.f.jvp(lambda x: y * 1.0, (x,), (tx,)), [rand(2, 3)] * 3),
    "multiple_outputs": (lambda S, x, t: S.f.jvp(lambda x: (S.np.sin(x), S.np.cos(x)), (x,), (t,)), [rand(2, 3), rand(2, 3)]),
    "multiple_inputs_outputs": (lambda S, x, y, tx, ty: S.f.jvp(lambda x, y: (2 * x + 3 * y, 4 * x + 5 * y), (x, y), (tx, ty)), [rand(2, 3)] * 4),
    "jvp_new_tensor": (lambda S, x: S.f.jvp(lambda x: x + S.arr(0.5), (x,), (x * 0,)), [rand(10, 10)]),
    "list_output": (lambda S, x, t: S.f.jvp(lambda x: [x, x.sum()], (x,), (t,)), [rand(2, 3), rand(2, 3)]),
    "dict_output": (lambda S, x, t: S.f.jvp(lambda x: {"x": x, "xsum": x.sum()}, (x,), (t,)), [rand(2, 3), rand(2, 3)]),
    "composite_output": (lambda S, x, t: S.f.jvp(_composite, (x,), (t,)), [rand(2, 3), rand(2, 3)]),
    "aux_tensor": (lambda S, x, t: S.f.jvp(lambda z: (S.np.sin(z), S.np.cos(z)), (x,), (t,), has_aux=True), [rand(3), rand(3)]),
    "aux_pytree": (lambda S, x, t: S.f.jvp(lambda x: (S.np.sin(x), {"a": S.np.cos(x), "b": [S.np.tan(x)]}), (x,), (t,), has_aux=True), [rand(3), rand(3)]),
    "disable_fwd_grad_inside": (lambda S, x: (S.f.jvp(lambda x: x ** 2 - S.sg(x ** 2), (x,), (S.np.ones_like(x),))[1],
                                              S.f.jvp(lambda x: S.f.jvp(lambda x: x ** 2 - S.sg(x ** 2), (x,), (S.np.ones_like(x),))[1], (x,), (S.np.ones_like(x),))[1]),
                                [rand()]),
    "vmap_of_jvp": (lambda S, x, t: S.f.vmap(lambda x, t: S.f.jvp(S.np.sin, (x,), (t,)), in_dims=(1, 1))(x, t), [rand(3, 4), rand(3, 4)]),
    "strict_ok": (lambda S, x, t: S.f.jvp(lambda x: x * 3, (x,), (t,), strict=True), [rand(3), rand(3)]),
}


@pytest.mark.parametrize("name", list(JVP_CASES))
def test_jvp(name):
    case, inputs = JVP_CASES[name]
    run_both(case, *inputs)


def _jvp_errors():
    one = lambda S: S.arr(1.0)
    x = lambda S: S.arr(rand(2, 3))
    return {
        "primals_not_tuple": (lambda S: S.f.jvp(lambda x: x, one(S), one(S)),
                              RuntimeError, "Expected primals to be a tuple", TypeError, r"expected primals to be a tuple"),
        "structure_mismatch": (lambda S: S.f.jvp(lambda x: x, ((one(S), one(S)), one(S)), (one(S), one(S))),
                               RuntimeError, "same python structure", ValueError, r"tangents must have the same structure as primals"),
        "no_tensor": (lambda S: S.f.jvp(lambda x: x, ((),), ((),)),
                      RuntimeError, "at least one Tensor", ValueError, r"expected at least one array among the primals"),
        "length_mismatch": (lambda S: S.f.jvp(lambda x: S.np.sin(x), (x(S),), (x(S), x(S))),
                            RuntimeError, "same python structure", ValueError, r"got 1 primal\(s\) but 2 tangent\(s\)"),
        "length_mismatch_2": (lambda S: S.f.jvp(lambda x, y: x, (x(S), x(S)), (x(S), x(S), x(S))),
                              RuntimeError, "same python structure", ValueError, r"got 2 primal\(s\) but 3 tangent\(s\)"),
        "empty": (lambda S: S.f.jvp(lambda x: S.np.sin(x), (), ()),
                  RuntimeError, "at least one Tensor", ValueError, r"expected at least one primal"),
        "primals_a_tensor": (lambda S: S.f.jvp(lambda x: S.np.sin(x), x(S), (x(S),)),
                             RuntimeError, "be a tuple", TypeError, r"expected primals to be a tuple"),
        "tangents_a_tensor": (lambda S: S.f.jvp(lambda x: S.np.sin(x), (x(S),), x(S)),
                              RuntimeError, "same python structure", TypeError, r"expected tangents to be a tuple"),
        "tangents_a_list": (lambda S: S.f.jvp(lambda x: S.np.sin(x), (x(S),), [x(S)]),
                            RuntimeError, "same python structure", ValueError, r"primals is a tuple but tangents is a list"),
        "tangent_a_number": (lambda S: S.f.jvp(lambda x: S.np.sin(x), (x(S),), (1.0,)),
                             RuntimeError, "only contain Tensors", ValueError, r"tangents\[0\] has shape \(\) but primals\[0\] has shape \(2, 3\)"),
        "strict_mode": (lambda S: S.f.jvp(lambda x: (x, S.arr(rand(2, 3)) * 1.0), (x(S),), (x(S),), strict=True),
                        RuntimeError, "strict", ValueError, r"strict=True: an output of f is independent of the inputs"),
        "aux_list": (lambda S: S.f.jvp(lambda t: [t, t], (x(S),), (x(S),), has_aux=True),
                     RuntimeError, "should be a tuple", ValueError, r"has_aux=True expects the function to return a tuple"),
        "aux_triple": (lambda S: S.f.jvp(lambda t: (t, t + 2, t + 3), (x(S),), (x(S),), has_aux=True),
                       RuntimeError, "should be a tuple", ValueError, r"got a tuple of length 3"),
        "empty_output_none": (lambda S: S.f.jvp(lambda _: None, (x(S),), (x(S),)),
                              RuntimeError, "non-empty output", ValueError, r"jvp\(<lambda>, primals, tangents\): expected f to return at least one array"),
        "empty_output_tuple": (lambda S: S.f.jvp(lambda _: (), (x(S),), (x(S),)),
                               RuntimeError, "non-empty output", ValueError, r"expected f to return at least one array"),
        "output_int": (lambda S: S.f.jvp(lambda _: 1, (x(S),), (x(S),)),
                       RuntimeError, "to return only tensors", TypeError, r"the output is a Python int"),
        "output_bool": (lambda S: S.f.jvp(lambda _: True, (x(S),), (x(S),)),
                        RuntimeError, "to return only tensors", TypeError, r"the output is a Python bool"),
        "output_float": (lambda S: S.f.jvp(lambda _: 12.2, (x(S),), (x(S),)),
                         RuntimeError, "to return only tensors", TypeError, r"the output is a Python float"),
        "output_str": (lambda S: S.f.jvp(lambda _: "abc", (x(S),), (x(S),)),
                       RuntimeError, "to return only tensors", TypeError, r"the output is str"),
        "aux_int": (lambda S: S.f.jvp(lambda x: (x, [x, 1]), (x(S),), (x(S),), has_aux=True),
                    RuntimeError, "Expected tensors, got unsupported type", TypeError, r"aux\[1\] is a int"),
        "aux_str": (lambda S: S.f.jvp(lambda x: (x, "abc"), (x(S),), (x(S),), has_aux=True),
                    RuntimeError, "Expected tensors, got unsupported type", TypeError, r"aux is a str"),
    }


JVP_ERRORS = _jvp_errors()


@pytest.mark.parametrize("name", list(JVP_ERRORS))
def test_jvp_errors(name):
    _raise_both(*JVP_ERRORS[name])


def test_jvp_python_number_primal_is_a_deliberate_difference():
    """torch requires tensors among the primals; JAX (and so functorch_lite) accepts
    Python numbers, as jax.jvp does."""
    with pytest.raises(RuntimeError, match="only contain Tensors"):
        torch.func.jvp(torch.sin, (1.0,), (torch.ones(()),))
    out, t = fl.jvp(jnp.sin, (1.0,), (jnp.ones(()),))
    np.testing.assert_allclose(t, np.cos(1.0))


# ============================================================================ TestLinearize

LINEARIZE_CASES = {
    "basic": (lambda S, x, t: (lambda r: (r[0], r[1](t)))(S.f.linearize(S.np.cos, x)), [rand(3, 1), rand(3, 1)]),
    "return": (lambda S, x, t: (lambda r: (r[0], r[1](t)))(S.f.linearize(lambda x: (S.np.cos(x), x.sum()), x)), [rand(3, 1), rand(3, 1)]),
    "composition_vmap": (lambda S, x, t: S.f.vmap(S.f.linearize(lambda x: (S.np.cos(x), x.sum()), x)[1])(t), [rand(3, 1), rand(3, 3, 1)]),
    "composition_grad": (lambda S, x, t: S.f.linearize(lambda x: S.f.grad(lambda x: (S.np.ones(3, dtype=x.dtype) * S.np.sin(x)).sum())(x), x)[1](t),
                         [rand(3), rand(3)]),
    "nested_input_nested_output": (
        lambda S, x, y, z, tx, ty, tz: (lambda r: (r[0], r[1]({"x": tx, "yz": (ty, tz)})))(
            S.f.linearize(lambda a: {"a": a["x"].sum(), "b": {"c": a["yz"][0] + a["yz"][1], "d": (a["x"] * a["yz"][1], S.np.exp(a["yz"][0]))}},
                          {"x": x, "yz": (y, z)})),
        [rand(3, 1)] * 6),
}


@pytest.mark.parametrize("name", list(LINEARIZE_CASES))
def test_linearize(name):
    case, inputs = LINEARIZE_CASES[name]
    run_both(case, *inputs)


# ============================================================================ functional_call / stack_module_state


def test_model_ensembling_tutorial():
    """torch.func's ensembling tutorial: stack_module_state + functional_call under vmap."""
    tmods = [torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2)).double() for _ in range(5)]
    x = rand(6, 4)
    params, buffers = torch.func.stack_module_state(tmods)
    base = tmods[0]
    theirs = torch.func.vmap(lambda p, b, x: torch.func.functional_call(base, (p, b), (x,)), in_dims=(0, 0, None))(params, buffers, torch.tensor(x))

    def apply(p, x):       # the same network; torch's Linear weight is (out, in)
        h = jnp.tanh(x @ p["0.weight"].T + p["0.bias"][None, :])
        return h @ p["2.weight"].T + p["2.bias"][None, :]

    models = [{k: jnp.asarray(v.detach().numpy()) for k, v in m.named_parameters()} for m in tmods]
    p, b = fl.stack_module_state(models)
    assert list(p) == list(params) and b == {} and dict(buffers) == {}
    ours = fl.vmap(lambda p, b, x: fl.functional_call(apply, (p, b), (x,)), in_dims=(0, 0, None))(p, b, jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(ours), theirs.detach().numpy(), rtol=1e-12)


@pytest.mark.slow
def test_neural_tangent_kernel_tutorial():
    """torch.func's NTK tutorial: jacrev of functional_call w.r.t. the params, per sample."""
    tnet = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2)).double()
    tparams = {k: v.detach() for k, v in tnet.named_parameters()}
    x1, x2 = rand(4, 3), rand(3, 3)

    def tf_single(p, x):
        return torch.func.functional_call(tnet, p, (x[None],))[0]

    def ntk(S, single, params, a, b):
        j1 = S.f.vmap(S.f.jacrev(single), (None, 0))(params, a)
        j2 = S.f.vmap(S.f.jacrev(single), (None, 0))(params, b)
        j1 = [j1[k].reshape(j1[k].shape[0], j1[k].shape[1], -1) for k in j1]
        j2 = [j2[k].reshape(j2[k].shape[0], j2[k].shape[1], -1) for k in j2]
        return sum(S.np.einsum("Naf,Mbf->NMab", u, v) for u, v in zip(j1, j2))

    theirs = ntk(T, tf_single, tparams, torch.tensor(x1), torch.tensor(x2))

    def apply(p, x):
        h = jnp.tanh(x @ p["0.weight"].T + p["0.bias"][None, :])
        return h @ p["2.weight"].T + p["2.bias"][None, :]

    params = {k: jnp.asarray(v.numpy()) for k, v in tparams.items()}
    ours = ntk(J, lambda p, x: fl.functional_call(apply, p, (x[None],))[0], params, jnp.asarray(x1), jnp.asarray(x2))
    np.testing.assert_allclose(np.asarray(ours), theirs.numpy(), rtol=1e-10)
