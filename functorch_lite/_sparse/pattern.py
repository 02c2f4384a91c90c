"""``Pattern``: a static Jacobian/Hessian sparsity pattern with its colorings and plan."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import scipy.sparse as sp

from . import coloring as _coloring

__all__ = ["Pattern", "Plan"]


class Plan:
    """How a sparse Jacobian/Hessian is accumulated: ``kind`` is ``"fwd"`` (column
    coloring, JVPs), ``"rev"`` (row coloring, VJPs), ``"bi"`` (both, a bicoloring) or
    ``"star"`` (star coloring of a Hessian, HVPs)."""

    def __init__(self, kind, col_colors=None, row_colors=None, fwd_entry=None, *, counts=None):
        self.kind = kind
        self._col, self._row, self.fwd_entry = col_colors, row_colors, fwd_entry
        # (n_jvp, n_vjp) known in advance: the colors may then be given as functions, and
        # are computed when the run reads them (an axis map's count is a product of sizes)
        self._counts = counts

    @property
    def col_colors(self):
        if callable(self._col):
            self._col = self._col()
        return self._col

    @property
    def row_colors(self):
        if callable(self._row):
            self._row = self._row()
        return self._row

    @property
    def n_jvp(self) -> int:
        if self._counts is not None:
            return self._counts[0]
        return _coloring.ncolors(self.col_colors) if self.col_colors is not None else 0

    @property
    def n_vjp(self) -> int:
        if self._counts is not None:
            return self._counts[1]
        return _coloring.ncolors(self.row_colors) if self.row_colors is not None else 0

    @property
    def passes(self) -> int:
        return self.n_jvp + self.n_vjp

    def describe(self) -> str:
        if self.kind == "star":
            return f"{self.n_jvp} HVPs (star coloring)"
        parts = []
        if self.n_jvp:
            parts.append(f"{self.n_jvp} JVP{'s' * (self.n_jvp != 1)}")
        if self.n_vjp:
            parts.append(f"{self.n_vjp} VJP{'s' * (self.n_vjp != 1)}")
        how = {"fwd": "column coloring", "rev": "row coloring", "bi": "bicoloring"}[self.kind]
        return " + ".join(parts or ["0 passes"]) + f" ({how})"

    def __repr__(self) -> str:
        return f"Plan({self.describe()})"


class Pattern:
    """The structural nonzeros of a Jacobian ``d out / d in`` (or a Hessian).

    ``matrix`` is a boolean ``scipy.sparse.csr_matrix`` of shape ``(m, n)``, ``m`` the
    flattened output size and ``n`` the flattened input size (several inputs: their
    flattened elements concatenated). ``shape`` is ``out_shape + in_shape`` (numerator
    layout). The colorings are computed on first use and kept.

    Attributes: ``shape``, ``matrix_shape``, ``nnz``, ``density``, ``symmetric`` (a
    Hessian pattern), :meth:`passes` (passes by mode), :meth:`plan`, :meth:`plot`.

    >>> import numpy as np
    >>> p = Pattern(np.eye(3, dtype=bool) | np.eye(3, k=1, dtype=bool))
    >>> p.nnz, p.passes()["fwd"], p.passes()["dense fwd"]
    (5, 2, 3)
    """

    def __init__(self, matrix: Any, out_shape: tuple | None = None, in_shape: tuple | None = None,
                 *, symmetric: bool = False, name: str = "f", source: str = "given"):
        m = sp.csr_matrix(matrix, dtype=bool)
        m.sum_duplicates()
        m.eliminate_zeros()
        m.sort_indices()
        self._matrix, self.blocks = m, None
        self.out_shape = tuple(out_shape) if out_shape is not None else (m.shape[0],)
        self.in_shape = tuple(in_shape) if in_shape is not None else (m.shape[1],)
        self.symmetric, self.name, self.source = symmetric, name, source
        self._cache: dict = {}

    @classmethod
    def from_blocks(cls, blocks: Any, *, name: str = "f", source: str = "jaxpr") -> "Pattern":
        """The pattern of an axis map (:class:`~functorch_lite._jaxpr.blocks.Blocks`): its
        colorings in closed form, its matrix built only when something reads it."""
        self = cls.__new__(cls)
        self._matrix, self.blocks = None, blocks
        self.out_shape, self.in_shape = tuple(blocks.out_shape), tuple(blocks.in_shape)
        self.symmetric, self.name, self.source = False, name, source
        self._cache = {}
        return self

    @property
    def matrix(self) -> sp.csr_matrix:
        """The boolean CSR matrix (flattened outputs x flattened inputs)."""
        if self._matrix is None:
            self._matrix = self.blocks.matrix()
        return self._matrix

    # -- basic facts ------------------------------------------------------------------

    @property
    def shape(self) -> tuple:
        return self.out_shape + self.in_shape

    @property
    def matrix_shape(self) -> tuple[int, int]:
        if self._matrix is not None:
            return self._matrix.shape
        return (math.prod(self.out_shape), math.prod(self.in_shape))

    @property
    def nnz(self) -> int:
        return self.blocks.nnz if self.blocks is not None else int(self.matrix.nnz)

    @property
    def density(self) -> float:
        m, n = self.matrix_shape
        return self.nnz / (m * n) if m * n else 0.0

    @property
    def rows(self) -> np.ndarray:
        """Row (flat output index) of each nonzero, row-major order."""
        if "rows" not in self._cache:
            self._cache["rows"] = np.repeat(np.arange(self.matrix.shape[0]), np.diff(self.matrix.indptr))
        return self._cache["rows"]

    @property
    def cols(self) -> np.ndarray:
        """Column (flat input index) of each nonzero, row-major order."""
        return self.matrix.indices.astype(np.int64)

    def toarray(self) -> np.ndarray:
        """Dense boolean array of shape :attr:`shape`."""
        return self.matrix.toarray().reshape(self.shape)

    def to_scipy(self) -> sp.csr_matrix:
        return self.matrix.copy()

    def _structurally_symmetric(self) -> bool:
        m = self.matrix
        return m.shape[0] == m.shape[1] and (m != m.T).nnz == 0

    # -- colorings --------------------------------------------------------------------

    def column_colors(self) -> np.ndarray:
        """A color per column; columns of one color share no row (one JVP per color)."""
        if "col" not in self._cache:
            self._cache["col"] = (self.blocks.column_colors() if self.blocks is not None
                                  else _coloring.column_coloring(self.matrix))
        return self._cache["col"]

    def row_colors(self) -> np.ndarray:
        """A color per row; rows of one color share no column (one VJP per color)."""
        if "row" not in self._cache:
            if self.blocks is not None:
                self._cache["row"] = self.blocks.row_colors()
            elif self._structurally_symmetric():
                self._cache["row"] = self.column_colors()
            else:
                self._cache["row"] = _coloring.row_coloring(self.matrix)
        return self._cache["row"]

    def star_colors(self) -> np.ndarray:
        """A star coloring of the symmetrized pattern (one HVP per color)."""
        if "star" not in self._cache:
            self._cache["star"] = _coloring.star_coloring(self.matrix)
        return self._cache["star"]

    def bicoloring(self) -> "_coloring.Bicoloring | None":
        """The cheapest direct bicoloring (JVPs and VJPs), when it beats one-sided ones."""
        if "bi" not in self._cache and self.blocks is not None:
            self._cache["bi"] = None    # no bicoloring beats min(rows, columns) on blocks
        if "bi" not in self._cache:
            upper = min(_coloring.ncolors(self.column_colors()), _coloring.ncolors(self.row_colors()))
            self._cache["bi"] = _coloring.bicoloring(self.matrix, upper=upper)
        return self._cache["bi"]

    def plan(self, mode: str = "auto") -> Plan:
        """The accumulation to run: ``mode`` ``"fwd"`` (JVPs), ``"rev"`` (VJPs), ``"bi"``,
        ``"star"`` (Hessians) or ``"auto"`` (fewest passes; ties go to JVPs)."""
        key = ("plan", mode)
        if key in self._cache:
            return self._cache[key]
        if mode == "star" or (mode == "auto" and self.symmetric):
            plan = Plan("star", col_colors=self.star_colors())
        elif mode == "fwd":
            plan = Plan("fwd", col_colors=self.column_colors())
        elif mode == "rev":
            plan = Plan("rev", row_colors=self.row_colors())
        elif mode == "bi":
            bi = self.bicoloring()
            plan = (Plan("bi", col_colors=bi.col_colors, row_colors=bi.row_colors, fwd_entry=bi.fwd_entry)
                    if bi is not None else self.plan("auto"))
        else:
            plan = self._cheapest()
        self._cache[key] = plan
        return plan

    def _cheapest(self) -> Plan:
        """Fewest passes among columns, rows and a bicoloring, computed in the order of
        their lower bounds (densest row, densest column, the split bound) and skipped once
        a bound cannot beat the best found: an arrowhead never colors its n columns.
        An axis map's colorings meet their bounds (see :mod:`~functorch_lite._jaxpr.blocks`)."""
        b = self.blocks
        if b is not None:
            n_col, n_row = b.n_col_colors, b.n_row_colors
            if n_col <= n_row:
                return Plan("fwd", col_colors=self.column_colors, counts=(n_col, 0))
            return Plan("rev", row_colors=self.row_colors, counts=(0, n_row))
        m = self.matrix
        lb_col = int(np.diff(m.indptr).max(initial=0))
        lb_row = int(np.bincount(m.indices, minlength=m.shape[1]).max(initial=0))   # densest column
        lb_bi = _coloring.bicoloring_lower_bound(m)
        best = None
        for bound, kind in sorted([(lb_col, "fwd"), (lb_row, "rev"), (lb_bi, "bi")],
                                  key=lambda t: (t[0], ("fwd", "rev", "bi").index(t[1]))):
            if best is not None and bound >= best.passes:
                continue
            if kind == "fwd":
                cand = Plan("fwd", col_colors=self.column_colors())
            elif kind == "rev":
                cand = Plan("rev", row_colors=self.row_colors())
            else:
                upper = best.passes if best is not None else None
                if "bi" not in self._cache or upper is None:
                    bi = _coloring.bicoloring(m, upper=upper)
                    if upper is None or bi is not None:
                        self._cache.setdefault("bi", bi)
                else:
                    bi = self._cache["bi"]
                if bi is None:
                    continue
                cand = Plan("bi", col_colors=bi.col_colors, row_colors=bi.row_colors, fwd_entry=bi.fwd_entry)
            if best is None or cand.passes < best.passes:
                best = cand
        if best is None:
            best = Plan("fwd", col_colors=self.column_colors())
        return best

    def passes(self) -> dict[str, int]:
        """Passes by mode: colored ``fwd`` (JVPs), ``rev`` (VJPs), ``bi`` (JVPs + VJPs, if a
        bicoloring helps), ``star`` (HVPs, Hessians), and the dense ``n`` / ``m``."""
        m, n = self.matrix.shape
        out = {"fwd": _coloring.ncolors(self.column_colors()),
               "rev": _coloring.ncolors(self.row_colors())}
        bi = self.bicoloring()
        if bi is not None:
            out["bi"] = bi.passes
        if self.symmetric:
            out["star"] = _coloring.ncolors(self.star_colors())
        out["dense fwd"], out["dense rev"] = n, m
        return out

    # -- pictures ---------------------------------------------------------------------

    def spy(self, width: int = 48, height: int = 24) -> str:
        """A text spy plot: ``#`` where a block of the matrix holds a nonzero."""
        m, n = self.matrix.shape
        if m == 0 or n == 0:
            return "(empty)"
        h, w = min(m, height), min(n, width)
        r = (self.rows * h) // m
        c = (self.cols * w) // n
        grid = np.zeros((h, w), bool)
        grid[r, c] = True
        return "\n".join("".join("#" if v else "." for v in row) for row in grid)

    def __repr__(self) -> str:
        m, n = self.matrix.shape
        kind = "Hessian" if self.symmetric else "Jacobian"
        head = (f"Pattern({kind} of {self.name}: shape={self.shape}, matrix {m}x{n}, "
                f"nnz={self.nnz}, density={self.density:.3g})")
        try:
            p = self.passes()
            head += "\n  passes: " + ", ".join(f"{k} {v}" for k, v in p.items())
            head += "\n  plan:   " + self.plan("auto").describe()
        except Exception as exc:  # noqa: BLE001 - a repr must not raise
            head += f"\n  (coloring failed: {exc})"
        return head + "\n" + self.spy()

    def plot(self, ax: Any = None, mode: str = "auto", markersize: float | None = None):
        """Spy plot with each nonzero colored by its group (``mode`` as :meth:`plan`);
        returns the matplotlib Figure."""
        import matplotlib.pyplot as plt

        if ax is None:
            fig, ax = plt.subplots(figsize=(5, 5))
        else:
            fig = ax.figure
        plan = self.plan(mode)
        rows, cols = self.rows, self.cols
        if plan.kind in ("fwd", "star"):
            group = plan.col_colors[cols]
        elif plan.kind == "rev":
            group = plan.row_colors[rows]
        else:
            group = np.where(plan.fwd_entry, plan.col_colors[cols],
                             plan.n_jvp + plan.row_colors[rows])
        m, n = self.matrix.shape
        size = markersize if markersize is not None else max(0.5, 2000.0 / max(m, n))
        ax.scatter(cols, rows, c=group, cmap="tab10" if plan.passes <= 10 else "viridis",
                   s=size, marker="s", linewidths=0)
        ax.set_xlim(-0.5, n - 0.5)
        ax.set_ylim(m - 0.5, -0.5)
        ax.set_aspect("equal" if 0.2 < m / max(n, 1) < 5 else "auto")
        ax.set_xlabel("input element j")
        ax.set_ylabel("output element i")
        ax.set_title(f"{self.name}: nnz={self.nnz}, {plan.describe()}", fontsize=9)
        return fig


def as_pattern(given: Any, out_shape: tuple, in_shape: tuple, where: str, symmetric: bool = False,
               name: str = "f") -> Pattern:
    """A :class:`Pattern` from a user's ``sparsity=``: a Pattern, a BCOO, a SciPy sparse
    matrix or a (boolean) array, of shape ``(m, n)`` or ``out_shape + in_shape``."""
    m, n = math.prod(out_shape), math.prod(in_shape)
    full = tuple(out_shape) + tuple(in_shape)
    expected = f"{(m, n)}" if full == (m, n) else f"{(m, n)} or {full}"
    if isinstance(given, Pattern):
        if (given.shape == full and given.symmetric == symmetric and given.name == name):
            return given       # as it is, with the colorings it has computed
        mat = given.matrix
    elif sp.issparse(given):
        mat = sp.csr_matrix(given)
    else:
        try:
            from jax.experimental import sparse as jsparse
            if isinstance(given, jsparse.BCOO):
                idx = np.asarray(given.indices)
                data = np.asarray(given.data) != 0
                if given.n_batch or given.n_dense:
                    given = np.asarray(given.todense())
                    mat = None
                else:
                    flat_shape = given.shape
                    lin = np.ravel_multi_index(idx.T, flat_shape) if idx.size else np.zeros(0, np.int64)
                    total = math.prod(flat_shape)
                    if flat_shape not in (full, (m, n)):
                        raise ValueError(
                            f"{where}: sparsity has shape {flat_shape}; expected {expected} "
                            "(outputs x inputs, numerator layout); pass the pattern of this derivative.")
                    mat = sp.csr_matrix((data.astype(np.float32), (lin[data] // n, lin[data] % n)),
                                        shape=(m, n)) if total else sp.csr_matrix((m, n))
            else:
                mat = None
        except ImportError:  # pragma: no cover
            mat = None
        if mat is None:
            arr = np.asarray(given)
            if arr.dtype == object:
                raise TypeError(f"{where}: sparsity must be a boolean array, a SciPy sparse matrix, a "
                                f"jax.experimental.sparse.BCOO or a Pattern; got {type(given).__name__}.")
            if arr.shape not in (full, (m, n)):
                raise ValueError(f"{where}: sparsity has shape {arr.shape}; expected {expected} "
                                 "(outputs x inputs, numerator layout); pass the pattern of this derivative.")
            mat = sp.csr_matrix(arr.reshape(m, n) != 0)
    if mat.shape != (m, n):
        raise ValueError(f"{where}: sparsity has shape {mat.shape}; expected {expected} "
                         "(outputs x inputs, numerator layout); pass the pattern of this derivative.")
    if symmetric:
        mat = sp.csr_matrix(mat, dtype=bool)
        mat = mat + mat.T
    return Pattern(mat, out_shape, in_shape, symmetric=symmetric, name=name, source="given")
