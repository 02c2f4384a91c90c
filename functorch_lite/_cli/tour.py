"""``functorch-lite tour``: the ideas the library rests on, each computed by the library,
checked against its closed form and printed, with pictures of the computation graphs.

The tour is a list of *stops* (:data:`STOPS`). A stop is a function of a
:class:`TourContext` registered with the :func:`stop` decorator; it computes something,
compares it with the closed form through ``ctx.check`` / ``ctx.check_true`` (each a line
of the report and one of the counted checks), says what it means with ``ctx.say``, and
may draw a graph with ``ctx.picture``. Adding a stop is writing one such function::

    @stop("hvp", "Hessian-vector product: forward over reverse")
    def _hvp(ctx):
        ...
        ctx.check("H v = 2 X^T X v", got, expected)
        ctx.picture("hvp", loss, w)                     # a computation graph, or
        ctx.save("explain.png", fl.explain(f, x).plot)  # any picture drawn to a path

The stops run in registration order, in float64 (so closed forms match to ~1e-12), and
the tour ends with ``tour: N/N checks passed, pictures in DIR``.

>>> [s.key for s in STOPS][:3]
['layout', 'accumulation', 'backward_v']
"""

from __future__ import annotations

import dataclasses
import io
import math
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

import jax
import jax.numpy as jnp
import numpy as np

import functorch_lite as fl

from .._cost import analyse
from ..nn import l2_norm
from .._viz import ComputationGraph, graph

__all__ = ["STOPS", "Check", "Stop", "TourContext", "TourResult", "run_tour", "stop"]


@dataclasses.dataclass(frozen=True)
class Check:
    stop: str
    what: str
    passed: bool
    detail: str = ""


@dataclasses.dataclass(frozen=True)
class Stop:
    key: str
    title: str
    run: Callable[[TourContext], None]


STOPS: list[Stop] = []


def stop(key: str, title: str) -> Callable[[Callable[[TourContext], None]], Callable[[TourContext], None]]:
    """Register a stop (a later stop with the same key replaces the earlier one)."""

    def register(fn: Callable[[TourContext], None]) -> Callable[[TourContext], None]:
        new = Stop(key, title, fn)
        for i, s in enumerate(STOPS):
            if s.key == key:
                STOPS[i] = new
                break
        else:
            STOPS.append(new)
        return fn

    return register


class TourContext:
    """What a stop writes to: the report, the checks, the pictures."""

    def __init__(self, out: Path, fmt: str = "png", engine: str = "auto", stream: TextIO | None = None):
        self.out = Path(out)
        self.fmt = fmt
        self.engine = engine
        self.stream = stream if stream is not None else sys.stdout
        self.checks: list[Check] = []
        self.pictures: list[Path] = []
        self.current = ""

    def say(self, text: str = "") -> None:
        for line in text.splitlines() or [""]:
            print(f"  {line}", file=self.stream)

    def _record(self, what: str, passed: bool, detail: str) -> bool:
        self.checks.append(Check(self.current, what, passed, detail))
        mark = "ok  " if passed else "FAIL"
        print(f"  [{mark}] {what}" + (f"  ({detail})" if detail else ""), file=self.stream)
        return passed

    def check(self, what: str, got: Any, expected: Any, *, rtol: float = 1e-9, atol: float = 1e-9) -> bool:
        """``got`` (a pytree) equals ``expected`` to ``rtol``/``atol``; prints the max error."""
        g_leaves, g_tree = jax.tree_util.tree_flatten(got)
        e_leaves, e_tree = jax.tree_util.tree_flatten(expected)
        if g_tree != e_tree:
            return self._record(what, False, f"structure {g_tree} != {e_tree}")
        err, ok = 0.0, True
        for g, e in zip(g_leaves, e_leaves):
            g, e = np.asarray(g, dtype=np.float64), np.asarray(e, dtype=np.float64)
            if g.shape != e.shape:
                return self._record(what, False, f"shape {g.shape} != {e.shape}")
            ok &= bool(np.allclose(g, e, rtol=rtol, atol=atol, equal_nan=False))
            if g.size:
                err = max(err, float(np.max(np.abs(g - e))))
        return self._record(what, ok, f"max |error| {err:.1e}")

    def check_true(self, what: str, condition: Any, detail: str = "") -> bool:
        return self._record(what, bool(condition), detail)

    def picture(self, name: str, func: Callable, *args: Any, **graph_kwargs: Any) -> ComputationGraph:
        """Draw ``viz.graph(func, *args, **graph_kwargs)`` to ``out/name.fmt`` (to
        ``out/name.dot`` when neither Graphviz nor matplotlib is installed)."""
        g = graph(func, *args, **graph_kwargs)
        try:
            path = g.render(self.out / f"{name}.{self.fmt}", engine=self.engine)
        except ImportError as exc:
            path = g.render(self.out / f"{name}.dot")
            self.say(f"({exc}; wrote the DOT text instead)")
        self.pictures.append(Path(path))
        self.say(f"picture: {path}")
        self.say(f"  {g.summary}")
        return g

    def save(self, filename: str, write: Callable[[str], Any]) -> Path:
        """Save another picture: ``write(path)`` draws to ``out/filename``, e.g.
        ``ctx.save("explain_chain.png", report.plot)``."""
        path = self.out / filename
        write(str(path))
        self.pictures.append(path)
        self.say(f"picture: {path}")
        return path


@dataclasses.dataclass(frozen=True)
class TourResult:
    checks: list[Check]
    pictures: list[Path]
    seconds: float

    @property
    def passed(self) -> int:
        return sum(c.passed for c in self.checks)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and self.passed == len(self.checks)


def run_tour(out: str | Path = "functorch_lite_out", *, only: Sequence[str] | None = None, fmt: str = "png",
             engine: str = "auto", stream: TextIO | None = None) -> TourResult:
    """Run the stops (all, or those in ``only``) and print the report and the summary
    line. A stop that raises counts as one failed check and the tour goes on."""
    stream = stream if stream is not None else sys.stdout
    ctx = TourContext(Path(out), fmt, engine, stream)
    ctx.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    stops = [s for s in STOPS if only is None or s.key in only]
    print(f"functorch_lite tour: {len(stops)} stops (jax {jax.__version__}, float64)", file=stream)
    with jax.enable_x64(True):
        for k, s in enumerate(stops, start=1):
            print(f"\n{k}. {s.title}  [{s.key}]", file=stream)
            ctx.current = s.key
            try:
                s.run(ctx)
            except Exception as exc:  # a broken stop is a failed check, not a crash
                buf = io.StringIO()
                traceback.print_exc(file=buf)
                ctx._record(f"stop {s.key!r} ran", False, f"{type(exc).__name__}: {exc}".splitlines()[0])
                print(buf.getvalue(), file=sys.stderr)
    result = TourResult(ctx.checks, ctx.pictures, time.perf_counter() - t0)
    failed = [c for c in ctx.checks if not c.passed]
    print(file=stream)
    for c in failed:
        print(f"FAILED [{c.stop}] {c.what} ({c.detail})", file=stream)
    print(f"tour: {result.passed}/{len(ctx.checks)} checks passed, pictures in {ctx.out} "
          f"({len(ctx.pictures)} pictures, {result.seconds:.1f} s)", file=stream)
    return result


# ---------------------------------------------------------------------------- the stops

def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _flops(f: Callable, *args: Any) -> float:
    """FLOPs of ``jax.jit(f)`` at ``args`` from XLA's cost analysis."""
    return analyse(f, *args).flops


@stop("layout", "Numerator vs denominator layout: d(Ax)/dx = A, and its transpose")
def _layout(ctx: TourContext) -> None:
    r = _rng(0)
    A = jnp.asarray(r.normal(size=(3, 4)))
    x = jnp.asarray(r.normal(size=4))
    ctx.say("f(x) = A x maps R^4 -> R^3. Numerator layout puts the output first: J is 3 x 4;")
    ctx.say("denominator layout is its transpose (4 x 3), the convention of many notes.")
    ctx.check("jacrev(A x) = A            (numerator, 3 x 4)", fl.jacrev(lambda x: A @ x)(x), A)
    ctx.check("jacfwd(A x) = A            (forward mode agrees)", fl.jacfwd(lambda x: A @ x)(x), A)
    ctx.check("layout='denominator' = A^T  (4 x 3)",
              fl.jacrev(lambda x: A @ x, layout="denominator")(x), A.T)
    u = jnp.asarray(r.normal(size=3))
    ctx.check("d(x^T A)/dx = A^T  (x in R^3, numerator)", fl.jacrev(lambda u: u @ A)(u), A.T)
    ctx.say("the chain rule in numerator layout: d(A u(x))/dx = A du/dx, with u = sin(x):")
    ctx.check("d(A sin x)/dx = A diag(cos x)", fl.jacrev(lambda x: A @ jnp.sin(x))(x), A * jnp.cos(x)[None, :])
    ctx.check("d(a sin x)/dx = a diag(cos x)  (a = 2.5)", fl.jacrev(lambda x: 2.5 * jnp.sin(x))(x),
              2.5 * jnp.diag(jnp.cos(x)))


@stop("accumulation", "The chain rule accumulated forward and reverse, and what each costs")
def _accumulation(ctx: TourContext) -> None:
    r = _rng(1)
    n, h1, h2, m = 64, 16, 8, 2
    W1, W2, W3 = (jnp.asarray(r.normal(size=s) / np.sqrt(s[1])) for s in [(h1, n), (h2, h1), (m, h2)])
    x = jnp.asarray(r.normal(size=n))

    def f(x):
        return W3 @ jnp.tanh(W2 @ jnp.tanh(W1 @ x))

    a1 = jnp.tanh(W1 @ x)
    a2 = jnp.tanh(W2 @ a1)
    J1, J2, J3 = (1 - a1**2)[:, None] * W1, (1 - a2**2)[:, None] * W2, W3
    J = J3 @ J2 @ J1
    ctx.say(f"f = f3 o f2 o f1 : R^{n} -> R^{h1} -> R^{h2} -> R^{m};  J = J3 J2 J1 ({m} x {n})")
    ctx.say(f"forward accumulation, J3 (J2 (J1 U)): one JVP per input direction -> {n} passes")
    ctx.say(f"reverse accumulation, ((V J3) J2) J1: one VJP per output direction -> {m} passes")
    Jf, Jr = fl.jacfwd(f)(x), fl.jacrev(f)(x)
    ctx.check("jacfwd(f) = J3 J2 J1  (closed form)", Jf, J)
    ctx.check("jacrev(f) = J3 J2 J1  (closed form)", Jr, J)
    f_fwd, f_rev, f_one = _flops(fl.jacfwd(f), x), _flops(fl.jacrev(f), x), _flops(f, x)
    ctx.say(f"XLA cost analysis: f {f_one:,.0f} FLOPs; jacfwd {f_fwd:,.0f}; jacrev {f_rev:,.0f}")
    ctx.check_true(f"reverse is cheaper for this wide-to-narrow chain (m={m} << n={n})",
                   f_rev < f_fwd, f"{f_fwd / f_rev:.1f}x fewer FLOPs")
    ctx.say("memory: reverse stores the forward pass's intermediates (the residuals) for the")
    ctx.say("backward pass; forward mode computes J u alongside and stores nothing:")

    def chain(x, W1, W2, W3):  # f with its weights as (undifferentiated) inputs, for the labels
        return W3 @ jnp.tanh(W2 @ jnp.tanh(W1 @ x))

    g_rev = ctx.picture("accumulation_reverse", chain, x, W1, W2, W3)
    g_fwd = ctx.picture("accumulation_forward", chain, x, W1, W2, W3, mode="fwd")
    ctx.check_true("reverse mode stores residuals, forward mode none",
                   g_rev.summary.residuals > 0 and g_fwd.summary.residuals == 0,
                   f"{g_rev.summary.residuals} residuals vs {g_fwd.summary.residuals}")


@stop("backward_v", "backward(v) is a vector-Jacobian product: v = ones sums the rows of J")
def _backward_v(ctx: TourContext) -> None:
    r = _rng(2)
    A = jnp.asarray(r.normal(size=(3, 4)))
    x = jnp.asarray(r.normal(size=4))

    def f(x):
        return jnp.tanh(A @ x)

    J = (1 - jnp.tanh(A @ x) ** 2)[:, None] * A
    v = jnp.asarray(r.normal(size=3))
    _, vjp_fn = fl.vjp(f, x)
    ctx.say("PyTorch's y.backward(v) for a vector y computes x.grad = v^T J: one reverse pass.")
    ctx.check("vjp(f, x)[1](v) = v^T J", vjp_fn(v)[0], v @ J)
    ctx.check("v = ones: sum of J's rows", vjp_fn(jnp.ones(3))[0], J.sum(axis=0))
    ctx.check("= grad of sum(f)  (what y.sum().backward() does)", fl.grad(lambda x: f(x).sum())(x),
              J.sum(axis=0))
    ctx.say("a gradient is the VJP of a scalar with v = 1; the seed's y = 2 x^T x:")
    x4 = jnp.arange(4.0)
    ctx.check("grad(2 x^T x) = 4x", fl.grad(lambda x: 2 * jnp.dot(x, x))(x4), 4 * x4)


@stop("linear", "The linear layer's rules: y = xW + b")
def _linear(ctx: TourContext) -> None:
    r = _rng(3)
    x, W, b = (jnp.asarray(r.normal(size=s)) for s in [(5, 4), (4, 3), (3,)])
    t = jnp.asarray(r.normal(size=(5, 3)))

    def loss(x, W, b):
        return 0.5 * jnp.sum((x @ W + b[None, :] - t) ** 2)

    G = x @ W + b[None, :] - t  # dL/dy
    gx, gW, gb = fl.grad(loss, argnums=(0, 1, 2))(x, W, b)
    ctx.say("L = ||xW + b - t||^2 / 2, so dL/dy = y - t =: G (a batch of 5 rows)")
    ctx.check("dL/dx = G W^T", gx, G @ W.T)
    ctx.check("dL/dW = x^T G", gW, x.T @ G)
    ctx.check("dL/db = sum of G over rows", gb, G.sum(axis=0))
    ctx.say("the backward pass needs x (for dL/dW) and W (for dL/dx): they are the residuals")
    g = ctx.picture("linear_layer", loss, x, W, b, argnums=(0, 1, 2))
    stored = {n.label for n in g.nodes if n.stored}
    ctx.check_true("x and W are stored for the backward pass", {"x", "W"} <= stored,
                   f"stored: {sorted(stored)}")


@stop("subgradient", "|x| and ||x|| at 0: a subgradient (0), never NaN")
def _subgradient(ctx: TourContext) -> None:
    norm = l2_norm
    ctx.say("norm: functorch_lite.nn.l2_norm")
    ctx.say(f"raw JAX for contrast: grad(jnp.abs)(0.) = {float(jax.grad(jnp.abs)(0.0))}, "
            f"grad(jnp.linalg.norm)(zeros(3)) = {np.asarray(jax.grad(jnp.linalg.norm)(jnp.zeros(3)))}")
    g0 = fl.grad(norm)(jnp.asarray(0.0))
    ctx.check("d|x|/dx at 0 = 0  (a subgradient: 0 is in [-1, 1])", g0, 0.0, atol=0)
    xs = jnp.asarray([-2.0, -0.5, 0.5, 3.0])
    ctx.check("d|x|/dx = sign(x) away from 0", jax.vmap(fl.grad(norm))(xs), jnp.sign(xs))
    gz = fl.grad(norm)(jnp.zeros(3))
    ctx.check("d||x||/dx at 0 = 0  (no NaN)", gz, jnp.zeros(3), atol=0)
    v = jnp.asarray([3.0, 0.0, -4.0])
    ctx.check("d||x||/dx = x / ||x|| away from 0", fl.grad(norm)(v), v / 5.0)


def _control_flow(a):
    b = a * 2
    while jnp.linalg.norm(b) < 1000:
        b = b * 2
    return b if b.sum() > 0 else 100 * b


@stop("control_flow", "Python control flow, and stop_gradient as detach")
def _control(ctx: TourContext) -> None:
    ctx.say("b = 2a, doubled while |b| < 1000; c = b if b > 0 else 100 b. For the branch taken")
    ctx.say("c is linear in a, so dc/da = c / a (the loop runs eagerly, in Python):")
    for a in (0.37, -1.3):
        a = jnp.asarray(a)
        ctx.check(f"a = {float(a):+.2f}: dc/da = c / a", fl.grad(_control_flow)(a), _control_flow(a) / a)
    x = jnp.arange(1.0, 5.0)

    def detached(x):
        return jnp.sum(jax.lax.stop_gradient(x * x) * x)

    ctx.say("u = stop_gradient(x * x) is PyTorch's x.detach(): a constant to the backward pass")
    ctx.check("d/dx sum(detach(x x) x) = x * x", fl.grad(detached)(x), x * x)
    ctx.check("without detach: d/dx sum(x x x) = 3 x^2", fl.grad(lambda x: jnp.sum(x * x * x))(x), 3 * x * x)
    g = ctx.picture("detach", detached, x)
    ctx.check_true("the detached branch adds no backward ops", g.summary.backward_ops
                   < graph(lambda x: jnp.sum(x * x * x), x).summary.backward_ops,
                   f"{g.summary.backward_ops} backward ops")


@stop("hessian", "A Hessian: ||Xw - y||^2 has Hessian 2 X^T X, in every nesting of modes")
def _hessian(ctx: TourContext) -> None:
    r = _rng(4)
    X, y, w = jnp.asarray(r.normal(size=(6, 3))), jnp.asarray(r.normal(size=6)), jnp.asarray(r.normal(size=3))

    def loss(w):
        return jnp.sum((X @ w - y) ** 2)

    ctx.check("grad = 2 (Xw - y)^T X", fl.grad(loss)(w), 2 * (X @ w - y) @ X)
    for mode in ("fwd-over-rev", "rev-over-rev", "rev-over-fwd", "fwd-over-fwd"):
        ctx.check(f"hessian(mode={mode!r}) = 2 X^T X", fl.hessian(loss, mode=mode)(w), 2 * X.T @ X)


@stop("hvp", "A Hessian-vector product, forward over reverse, never forming H")
def _hvp(ctx: TourContext) -> None:
    r = _rng(5)
    X, y, w = jnp.asarray(r.normal(size=(8, 4))), jnp.asarray(r.normal(size=8)), jnp.asarray(r.normal(size=4))
    v = jnp.asarray(r.normal(size=4))

    def loss(w):
        return jnp.sum((X @ w - y) ** 2) + jnp.sum(jnp.cos(w))

    H = 2 * X.T @ X - jnp.diag(jnp.cos(w))
    g, Hv = fl.hvp(loss, (w,), (v,))
    ctx.say("hvp = jvp of grad: one reverse pass for the gradient, carried forward along v,")
    ctx.say("costs a few gradients whatever n is; H (n x n) is never built.")
    ctx.check("grad = 2 X^T (Xw - y) - sin(w)", g, 2 * X.T @ (X @ w - y) - jnp.sin(w))
    ctx.check("H v = (2 X^T X - diag(cos w)) v", Hv, H @ v)
    ctx.check("hessian_diag = diag(H)", fl.hessian_diag(loss)(w), jnp.diag(H))


@stop("taylor", "The 8th derivative by Taylor mode (jet), not eight nested grads")
def _taylor(ctx: TourContext) -> None:
    a, x = 0.7, 0.3
    d8 = fl.derivative(lambda t: jnp.exp(a * t) * jnp.sin(t), order=8)(x)
    # d^k/dt^k [e^{at} sin t] = (a^2 + 1)^{k/2} e^{at} sin(t + k atan2(1, a))
    expected = (a * a + 1) ** 4 * np.exp(a * x) * np.sin(x + 8 * np.arctan2(1.0, a))
    ctx.check("d^8/dx^8 e^{ax} sin x = (a^2+1)^4 e^{ax} sin(x + 8 atan(1/a))", d8, expected, rtol=1e-10)
    coeffs = fl.taylor(jnp.exp, order=6)(0.0)
    ctx.check("Taylor coefficients of exp at 0 are 1/k!", coeffs,
              jnp.asarray([1.0 / math.factorial(k) for k in range(7)]))
    ctx.say("Nested grad grows exponentially in the order; Taylor mode propagates a truncated")
    ctx.say("power series once, about quadratically (docs/benchmarks.md: order 8 over 10,000")
    ctx.say("points runs and compiles >= 20x faster than eight nested jax.grad).")


@stop("mixed", "Mixed mode: a bottleneck chain bracketed the cheapest way")
def _mixed(ctx: TourContext) -> None:
    r = _rng(6)
    n, b = 200, 4
    W1, W2 = jnp.asarray(r.normal(size=(b, n)) / n ** 0.5), jnp.asarray(r.normal(size=(n, b)) / b ** 0.5)
    V1, V2 = jnp.asarray(r.normal(size=(n, n)) / n ** 0.5), jnp.asarray(r.normal(size=(n, n)) / n ** 0.5)
    chain_of = fl.chain(lambda x: jnp.tanh(V1 @ x), lambda h: jnp.tanh(W1 @ h),
                                  lambda z: jnp.tanh(W2 @ z), lambda h: V2 @ h)
    x = jnp.asarray(r.normal(size=n))
    ctx.say(f"R^{n} -> R^{n} -> R^{b} -> R^{n} -> R^{n}: a narrow middle, so push J forward into the")
    ctx.say(f"bottleneck and pull it back out of it: {b} passes each side instead of {n}.")
    J = fl.jacobian(chain_of)(x)
    ctx.check("mixed-mode Jacobian = jax.jacrev of the composition", J, jax.jacrev(lambda x: chain_of(x))(x), rtol=1e-9)
    report = fl.explain(chain_of, x)
    ctx.say(f"bracketing: {report.bracketing}")
    flops = {c.name: c.flops for c in report.candidates}
    ctx.say("FLOPs (XLA): " + ", ".join(f"{k} {v:.3g}" for k, v in flops.items()))
    chosen = flops.get(report.chosen, float("nan"))
    ctx.check_true("the chosen plan needs fewer FLOPs than forward and reverse",
                   all(chosen < v for k, v in flops.items() if k in ("fwd", "rev")),
                   f"chosen {report.chosen}")
    ctx.save("mixed_mode_explain.png", report.plot)
