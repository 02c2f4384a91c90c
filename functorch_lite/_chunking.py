"""The chunked loop behind ``vmap(..., chunk_size=c)``: ``c`` batch elements at a time.

Two loop forms compute the same thing:

- **unrolled**: a Python loop over the chunks, each one ``jax.vmap`` of the function,
  and one ``concatenate``. XLA sees straight-line code: it fuses and schedules every
  chunk like the unchunked program (measured on XLA:CPU, docs/benchmarks.md: the
  tutorial CNN's per-sample gradients at batch 64, ``chunk_size=16``, run at
  unchunked speed this way). The program grows with the number of chunks, and XLA
  may overlap chunks, so the peak memory bound is looser.
- **lax.map**: a ``lax.map`` (a ``while`` loop) over the chunks. One chunk's body in the
  program, whatever the count, and one chunk's temporaries live at a time; but XLA:CPU
  runs loop bodies slower (no fusion across iterations, copies of the carried
  stacked outputs): measured 3.7-5.4x slower for the CNN above.

:func:`loop_form` picks unrolled for at most :data:`UNROLL_MAX_CHUNKS` (4) chunks and
``lax.map`` beyond (where the program size and compile time of an unrolled loop would
grow, and where memory is the reason to chunk). Measured: XLA:CPU plans the unrolled
form's temp memory like the unchunked program's (it does not bound memory), so only
``lax.map`` does; with 4 chunks or fewer the chunking buys speed-equivalence, not memory,
and a smaller ``chunk_size`` (more chunks) is what bounds memory. A remainder (``n`` not divisible by
``c``) is one more, smaller chunk.

>>> import jax.numpy as jnp
>>> loop_form(4), loop_form(64)
('unrolled', 'map')
>>> chunked_vmap(lambda x: x * 2, (jnp.arange(5.0),), [0], 0, 2, "doc")
Array([0., 2., 4., 6., 8.], dtype=float32)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

__all__ = ["chunked_vmap", "loop_form", "UNROLL_MAX_CHUNKS"]

UNROLL_MAX_CHUNKS = 4


def loop_form(chunks: int) -> str:
    """``"unrolled"`` for at most :data:`UNROLL_MAX_CHUNKS` chunks, else ``"map"``."""
    return "unrolled" if chunks <= UNROLL_MAX_CHUNKS else "map"


def _prefix_leaves(prefix: Any, tree: Any, where: str) -> list:
    """``prefix`` (ints and Nones, a prefix of ``tree``) with one entry per leaf of tree."""
    is_none = lambda x: x is None  # noqa: E731
    try:
        subtrees = jax.tree_util.tree_structure(prefix, is_leaf=is_none).flatten_up_to(tree)
    except (ValueError, TypeError):
        raise ValueError(
            f"{where}: out_dims={prefix!r} does not fit the structure of the function's output "
            f"({jax.tree_util.tree_structure(tree)}); give an int, None, or a pytree prefix "
            "of the output.") from None
    out = []
    for d, sub in zip(jax.tree_util.tree_leaves(prefix, is_leaf=is_none), subtrees):
        out.extend([d] * len(jax.tree_util.tree_leaves(sub)))
    return out


def chunked_vmap(f: Callable, args: tuple, dims: list, out_dims: Any, chunk_size: int,
                 where: str, *, form: str | None = None) -> Any:
    """``jax.vmap(f, in_axes, out_dims)(*args)`` computed ``chunk_size`` elements at a time.

    ``dims`` has one batch axis (or None) per leaf of ``args``; ``out_dims`` is as
    ``vmap``'s (a prefix of the output). ``form`` forces ``"unrolled"`` or ``"map"``
    (default: :func:`loop_form`). An output with ``out_dims`` None must not depend on
    the batch (``jax.vmap`` checks it in each chunk), and is taken from the first chunk.
    """
    flat, tree = jax.tree_util.tree_flatten(args)
    moved = [None if d is None else jnp.moveaxis(x, d, 0) for x, d in zip(flat, dims)]
    n = next(x.shape[0] for x in moved if x is not None)
    in_axes = tuple(None if d is None else 0 for d in dims)
    chunk_out = jax.tree_util.tree_map(lambda d: None if d is None else 0, out_dims,
                                       is_leaf=lambda x: x is None)

    def body(*leaves):
        return f(*jax.tree_util.tree_unflatten(tree, list(leaves)))

    def run(batch):   # batch: the mapped leaves with a leading chunk axis
        it = iter(batch)
        full = [next(it) if m is not None else x for x, m in zip(flat, moved)]
        return jax.vmap(body, in_axes=in_axes, out_axes=chunk_out)(*full)

    mapped = [x for x in moved if x is not None]
    full_chunks, rest = divmod(n, chunk_size)
    form = form or loop_form(full_chunks + (rest > 0))
    pieces = []   # (output pytree, has a leading chunk-stack axis to fold)
    if form == "unrolled":
        for start in range(0, n, chunk_size):
            pieces.append((run([x[start:start + chunk_size] for x in mapped]), False))
    elif form == "map":
        if full_chunks:
            main = [x[:full_chunks * chunk_size].reshape((full_chunks, chunk_size) + x.shape[1:])
                    for x in mapped]
            pieces.append((jax.lax.map(lambda b: run(list(b)), main), True))
        if rest:
            pieces.append((run([x[full_chunks * chunk_size:] for x in mapped]), False))
    else:
        raise ValueError(f"{where}: unknown loop form {form!r}; use 'unrolled' or 'map'.")

    out_tree = jax.tree_util.tree_structure(pieces[0][0])
    odims = _prefix_leaves(out_dims, pieces[0][0], where)
    per_piece = [(jax.tree_util.tree_leaves(p), stacked) for p, stacked in pieces]
    result = []
    for i, d in enumerate(odims):
        if d is None:
            leaf, stacked = per_piece[0][0][i], per_piece[0][1]
            result.append(leaf[0] if stacked else jnp.asarray(leaf))
            continue
        parts = [(leaves[i].reshape((-1,) + leaves[i].shape[2:]) if stacked else leaves[i])
                 for leaves, stacked in per_piece]
        joined = parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=0)
        result.append(jnp.moveaxis(joined, 0, d))
    return jax.tree_util.tree_unflatten(out_tree, result)
