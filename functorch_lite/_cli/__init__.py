"""The ``functorch-lite`` command (also ``python -m functorch_lite``).

Subcommands:

- ``tour [--out DIR]``: the ideas the library rests on, each computed and checked
  against its closed form, with pictures written to DIR (see :mod:`functorch_lite._cli.tour`).
- ``explain [NAME | module:function --shape S ...]``: the ``explain()`` table and picture.
- ``graph [NAME | module:function --shape S ...]``: the computation graph picture
  (forward ops, backward ops, stored residuals; see :mod:`functorch_lite._viz`).
- ``bench [--quick]``: runs ``benchmarks/`` (a source checkout) and prints the table.

Usage errors (an unknown subcommand, example or ``module:function``, a bad shape) print
one line to stderr and exit with status 2.

This package is the command line only, apart from the library core: ``tour`` (the
stops), ``_examples`` (the built-in functions); the core never imports it.
"""

from __future__ import annotations

import argparse
import importlib
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

PROG = "functorch-lite"
DEFAULT_OUT = "functorch_lite_out"


class UsageError(Exception):
    """A user mistake on the command line: reported in one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")
        sys.exit(2)


def _parse_shape(text: str) -> tuple[int, ...]:
    text = text.strip().strip("()[]").replace(" ", "")
    if text in ("", "scalar"):
        return ()
    parts = text.split(",")
    if parts[-1] == "" and len(parts) > 1:  # "4," is the tuple (4,)
        parts = parts[:-1]
    try:
        if any(d == "" for d in parts):
            raise ValueError
        dims = tuple(int(d) for d in parts)
    except ValueError:
        raise UsageError(f"bad --shape {text!r}: give comma-separated sizes, e.g. --shape 4,2 "
                         f"(or --shape scalar)") from None
    if any(d < 0 for d in dims):
        raise UsageError(f"bad --shape {text!r}: sizes must be >= 0")
    return dims


def _load_target(target: str, shapes: Sequence[str]) -> tuple[str, Any, tuple]:
    """``NAME`` (a built-in example) or ``module:function`` with ``--shape`` per argument.
    Returns (name, function, arguments)."""
    from ._examples import EXAMPLES

    if ":" not in target:
        if target not in EXAMPLES:
            raise UsageError(f"unknown example {target!r}: choose one of {', '.join(EXAMPLES)} "
                             f"or give module:function with --shape per argument")
        if shapes:
            raise UsageError(f"--shape applies to module:function targets, not to the built-in "
                             f"example {target!r}")
        func, args = EXAMPLES[target].make()
        return target, func, args
    module_name, _, func_name = target.partition(":")
    if not module_name or not func_name:
        raise UsageError(f"bad target {target!r}: expected module:function, e.g. mypkg.losses:loss")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())  # like `python -m`: modules of the current directory
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(f"cannot import module {module_name!r} of {target!r}: {exc}") from None
    func = module
    for part in func_name.split("."):
        func = getattr(func, part, None)
        if func is None:
            raise UsageError(f"module {module_name!r} has no attribute {func_name!r}")
    if not callable(func):
        raise UsageError(f"{target!r} is not callable (got {type(func).__name__})")
    if not shapes:
        raise UsageError(f"{target!r}: give the shape of each argument, e.g. --shape 3 --shape 4,2")
    import jax

    args = tuple(jax.random.normal(jax.random.key(i), _parse_shape(s)) for i, s in enumerate(shapes))
    return func_name, func, args


def _check_float_output(target: str, func: Any, args: tuple, argnums: int, what: str) -> None:
    """Derivatives need float outputs: an integer (or bool) output has none to explain."""
    import jax
    import jax.numpy as jnp

    try:
        out = jax.eval_shape(func, *args)
    except Exception:  # the transform itself reports a failing function
        return
    bad = [str(o.dtype) for o in jax.tree_util.tree_leaves(out)
           if not jnp.issubdtype(o.dtype, jnp.inexact)]
    if bad:
        raise UsageError(f"{what} of {target!r} failed: its output has dtype {bad[0]}; derivatives "
                         "need a float output (an integer output is piecewise constant: return floats)")


def _writable_dir(out: str) -> Path:
    path = Path(out)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise UsageError(f"cannot write to --out {out!r}: {exc.strerror or exc}; choose a writable "
                         "directory") from None
    return path


def _check_engine(engine: str) -> None:
    if engine == "dot" and shutil.which("dot") is None:
        raise UsageError("--engine dot: the Graphviz `dot` program is not on the PATH; install "
                         "graphviz or use --engine auto (matplotlib fallback)")


def _cmd_tour(ns: argparse.Namespace) -> int:
    from . import tour

    _check_engine(ns.engine)
    if ns.list:
        for s in tour.STOPS:
            print(f"{s.key:<16} {s.title}")
        return 0
    keys = [s.key for s in tour.STOPS]
    unknown = [k for k in ns.only or [] if k not in keys]
    if unknown:
        raise UsageError(f"unknown tour stop(s) {unknown}: choose from {', '.join(keys)}")
    _writable_dir(ns.out)
    result = tour.run_tour(ns.out, only=ns.only, fmt=ns.format, engine=ns.engine)
    return 0 if result.ok else 1


def _cmd_graph(ns: argparse.Namespace) -> int:
    from .._args import first_line
    from .._viz import graph

    _check_engine(ns.engine)
    name, func, args = _load_target(ns.target, ns.shape)
    _check_float_output(ns.target, func, args, ns.argnums, "graph")
    out = _writable_dir(ns.out)
    try:
        g = graph(func, *args, argnums=ns.argnums, mode=ns.mode, max_nodes=ns.max_nodes)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"graph of {ns.target!r} failed: {first_line(exc)}") from None
    safe = name.replace(".", "_")
    dot_path = g.render(out / f"graph_{safe}_{ns.mode}.dot")
    print(g.summary)
    print(f"DOT: {dot_path}")
    if ns.format != "dot":
        pic = g.render(out / f"graph_{safe}_{ns.mode}.{ns.format}", engine=ns.engine)
        print(f"picture: {pic}")
    return 0


def _cmd_explain(ns: argparse.Namespace) -> int:
    from .._args import first_line
    from .._explanation import explain

    name, func, args = _load_target(ns.target, ns.shape)
    _check_float_output(ns.target, func, args, ns.argnums, "explain")
    out = _writable_dir(ns.out)
    try:
        report = explain(func, *args, argnums=ns.argnums)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"explain of {ns.target!r} failed: {first_line(exc)}") from None
    print(report)
    pic = report.plot(str(out / f"explain_{name.replace('.', '_')}.png"))
    print(f"picture: {pic}")
    return 0


def repo_root() -> Path | None:
    """The source checkout holding ``benchmarks/`` next to the package, if any."""
    root = Path(__file__).resolve().parent.parent.parent
    return root if (root / "benchmarks" / "__main__.py").is_file() else None


def _cmd_bench(ns: argparse.Namespace) -> int:
    root = repo_root()
    if root is None:
        print(f"{PROG} bench: benchmarks/ is not next to this installation of functorch_lite "
              f"(an installed wheel has none); clone the repository and run `{PROG} bench` "
              f"or `python -m benchmarks` from its root", file=sys.stderr)
        return 1
    cmd = [sys.executable, "-m", "benchmarks"] + (["--quick"] if ns.quick else [])
    if ns.only:
        cmd += ["--only", *ns.only]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(root)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    print(f"$ {' '.join(cmd[1:])}   (in {root})", flush=True)
    return subprocess.run(cmd, cwd=root, env=env, check=False).returncode


def _target_args(p: argparse.ArgumentParser, default: str) -> None:
    from ._examples import EXAMPLES

    p.add_argument("target", nargs="?", default=default,
                   help=f"a built-in example ({', '.join(EXAMPLES)}; default {default}) or "
                        f"module:function")
    p.add_argument("--shape", action="append", default=[], metavar="S",
                   help="shape of each argument of module:function, in order (e.g. --shape 3 "
                        "--shape 4,2; --shape scalar for a 0-d argument); values are "
                        "standard normal from fixed keys")
    p.add_argument("--argnums", type=int, default=0, help="which argument to differentiate (default 0)")
    p.add_argument("--out", default=DEFAULT_OUT, metavar="DIR",
                   help=f"directory for the pictures (default {DEFAULT_OUT})")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="functorch_lite: the torch.func programming model "
                     "on JAX. Start with `functorch-lite tour`.")
    sub = parser.add_subparsers(dest="command", metavar="{tour,explain,graph,bench}")

    p = sub.add_parser("tour", help="walk through the ideas, each checked against its closed form",
                       description="Walk through the ideas the library rests on: each is computed "
                       "by the library, checked against its closed form and printed; pictures "
                       "go to DIR. Exits 1 if a check fails.")
    p.add_argument("--out", default=DEFAULT_OUT, metavar="DIR",
                   help=f"directory for the pictures (default {DEFAULT_OUT})")
    p.add_argument("--only", nargs="+", metavar="STOP", help="run only these stops (see --list)")
    p.add_argument("--list", action="store_true", help="list the stops and exit")
    p.add_argument("--format", choices=("png", "svg"), default="png", help="picture format")
    p.add_argument("--engine", choices=("auto", "dot", "matplotlib"), default="auto",
                   help="graph drawing: Graphviz `dot` when installed (auto), or force one")
    p.set_defaults(run=_cmd_tour)

    p = sub.add_parser("explain", help="how a Jacobian is accumulated and what it costs",
                       description="Print explain()'s table for a function (forward, reverse "
                       "and chosen accumulation with XLA's FLOPs and memory) and save its picture.")
    _target_args(p, "tanh_chain")
    p.set_defaults(run=_cmd_explain)

    p = sub.add_parser("graph", help="picture of a function's forward and backward graph",
                       description="Draw the computation graph: forward ops, the backward ops "
                       "reverse mode adds, and the residuals it stores (or the JVP with "
                       "--mode fwd). Writes DIR/graph_NAME_MODE.dot and the picture.")
    _target_args(p, "mlp")
    p.add_argument("--mode", choices=("rev", "fwd"), default="rev", help="reverse (vjp) or forward (jvp)")
    p.add_argument("--format", choices=("png", "svg", "dot"), default="png", help="picture format")
    p.add_argument("--engine", choices=("auto", "dot", "matplotlib"), default="auto",
                   help="Graphviz `dot` when installed (auto), or force one")
    p.add_argument("--max-nodes", type=int, default=60, help="collapse larger graphs (default 60)")
    p.set_defaults(run=_cmd_graph)

    p = sub.add_parser("bench", help="run benchmarks/ against raw JAX (and torch.func, autograd)",
                       description="Run `python -m benchmarks` of the source checkout and print "
                       "the comparison table.")
    p.add_argument("--quick", action="store_true", help="small sizes, fewer repetitions")
    p.add_argument("--only", nargs="+", metavar="NAME", help="run only these benchmark groups")
    p.set_defaults(run=_cmd_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    if ns.command is None:
        parser.print_help()
        return 0
    try:
        return ns.run(ns)
    except UsageError as exc:
        sys.stderr.write(f"{PROG} {ns.command}: error: {exc}\n")
        return 2
    except BrokenPipeError:  # `functorch-lite tour | head`: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
