"""Graph colorings of a sparsity pattern, in NumPy (run once, at trace time).

A *column coloring* partitions the columns of an ``m x n`` pattern ``P`` into groups of
structurally orthogonal columns (no two share a nonzero row), so one JVP with the sum
of a group's basis vectors, ``J s_c``, reads off every entry of those columns:
``J[i, j] = (J s_{c(j)})[i]``. This is a distance-2 coloring of the bipartite graph of
``P`` (equivalently a coloring of the column intersection graph ``P^T P``). A *row
coloring* is the same for ``P^T`` and VJPs.

A *bicoloring* (Coleman & Verma 1998) computes some entries with JVPs and the rest with
VJPs. Here it is a direct *row split*: a set ``R`` of rows (the dense ones) is recovered
by a row coloring of ``P[R, :]`` (VJPs, each group sums rows of ``R`` only) and the
other rows by a column coloring of ``P[~R, :]`` (JVPs, where only rows outside ``R`` must
not collide), or symmetrically a *column split*. The split with the fewest total passes
over a few density thresholds wins. An arrowhead (one dense row, one dense column and a
diagonal) takes 1 VJP + 2 JVPs, where columns or rows alone need ``n``.

A *star coloring* of a symmetric pattern (Gebremedhin, Manne & Pothen 2005) is a
distance-1 coloring in which every path on four vertices uses at least three colors.
Then for each off-diagonal nonzero ``(i, j)`` either ``j`` is the only neighbour of
``i`` with color ``c(j)`` (read ``H[i, j] = (H s_{c(j)})[i]``) or the other way around,
so a Hessian needs one HVP per color: a tridiagonal one 3, whatever ``n``.

>>> import numpy as np, scipy.sparse as sp
>>> P = sp.csr_matrix(np.eye(4, dtype=bool) | np.eye(4, k=1, dtype=bool))
>>> column_coloring(P).tolist()
[0, 1, 0, 1]
"""

from __future__ import annotations

import heapq

import numpy as np
import scipy.sparse as sp

__all__ = ["column_coloring", "row_coloring", "star_coloring", "bicoloring", "Bicoloring",
           "is_valid_column_coloring", "is_valid_star_coloring"]


def _greedy(adj: sp.csr_matrix, order: np.ndarray) -> np.ndarray:
    """Greedy coloring of the graph ``adj`` in ``order`` (smallest free color)."""
    indptr, indices = adj.indptr.tolist(), adj.indices.tolist()
    colors = [-1] * adj.shape[0]
    for v in order.tolist():
        used = {colors[w] for w in indices[indptr[v]:indptr[v + 1]]}
        c = 0
        while c in used:
            c += 1
        colors[v] = c
    return np.asarray(colors, np.int64)


def _dsatur(adj: sp.csr_matrix) -> np.ndarray:
    """DSATUR (Brelaz 1979): always color next the vertex whose neighbours already use
    the most distinct colors (ties: highest degree). On the distance-2 graph of a 5-point
    stencil it finds the optimal 5 colors where the natural order needs 7."""
    n = adj.shape[0]
    indptr, indices = adj.indptr.tolist(), adj.indices.tolist()
    nbrs = [indices[indptr[v]:indptr[v + 1]] for v in range(n)]
    deg = [len(x) for x in nbrs]
    span = max(deg, default=0) + 1
    sat = [set() for _ in range(n)]
    colors = [-1] * n
    # one integer per heap entry: -(saturation, degree) major, vertex minor
    heap = [-(d * n) + v for v, d in enumerate(deg)]
    heapq.heapify(heap)
    while heap:
        key = heapq.heappop(heap)
        v = key % n
        s = (-(key - v) // n) // span
        if colors[v] >= 0 or s != len(sat[v]):
            continue
        used = sat[v]
        c = 0
        while c in used:
            c += 1
        colors[v] = c
        for w in nbrs[v]:
            if colors[w] < 0 and c not in sat[w]:
                sat[w].add(c)
                heapq.heappush(heap, -((len(sat[w]) * span + deg[w]) * n) + w)
    return np.asarray(colors, np.int64)


def _intersection_graph(P: sp.csr_matrix) -> sp.csr_matrix:
    """Columns sharing a row: ``P^T P`` without its diagonal."""
    P = sp.csr_matrix(P, dtype=np.float32)
    g = (P.T @ P).tocsr()
    g.setdiag(0)
    g.eliminate_zeros()
    return g


def _cyclic(P: sp.csr_matrix, k: int) -> np.ndarray | None:
    """``colors[j] = j mod k`` when that is a column coloring of ``P`` (no row holds two
    columns congruent mod ``k``), else ``None``. With ``k`` the densest row's nonzeros it
    is optimal where valid: banded and block-diagonal patterns (a batch of samples through
    one layer) color so by one vectorized check, without the intersection graph."""
    colors = np.arange(P.shape[1], dtype=np.int64) % k
    rows = np.repeat(np.arange(P.shape[0], dtype=np.int64), np.diff(P.indptr))
    key = rows * k + colors[P.indices]          # (row, color): each at most once
    if P.shape[0] * k <= 8 * key.size + 4096:   # a count per (row, color) fits: O(nnz)
        clash = key.size and np.bincount(key, minlength=P.shape[0] * k).max() > 1
    else:
        key.sort()
        clash = bool(np.any(key[1:] == key[:-1]))
    return None if clash else colors


def column_coloring(P: sp.spmatrix) -> np.ndarray:
    """Structurally orthogonal column groups: ``colors[j]`` for each column of ``P``.

    The cyclic coloring ``j mod k`` (``k`` the densest row's nonzeros, a lower bound on
    the colors) where it is valid; otherwise greedy distance-2 coloring in the natural
    order and, when that is above the lower bound, DSATUR, the one with fewer colors.
    Never fewer colors than the densest row has nonzeros.
    """
    P = sp.csr_matrix(P)
    n = P.shape[1]
    if n == 0:
        return np.zeros(0, np.int64)
    bound = max(int(np.diff(P.indptr).max()) if P.shape[0] else 1, 1)
    cyclic = _cyclic(P, bound)
    if cyclic is not None:
        return cyclic
    g = _intersection_graph(P)
    best = _greedy(g, np.arange(n))
    if best.max() + 1 > bound:
        other = _dsatur(g)
        if other.max() < best.max():
            best = other
    return best


def row_coloring(P: sp.spmatrix) -> np.ndarray:
    """Structurally orthogonal row groups (a column coloring of ``P^T``)."""
    return column_coloring(sp.csr_matrix(P).T.tocsr())


def ncolors(colors: np.ndarray) -> int:
    return int(colors.max()) + 1 if colors.size else 0


class Bicoloring:
    """A direct bicoloring: rows ``rev_rows`` from VJPs (``row_colors``), the rest of the
    entries from JVPs (``col_colors``); or, with ``by="columns"``, columns ``fwd_cols``
    from JVPs and the rest from VJPs.

    ``row_colors[i]`` is -1 for rows not computed by VJPs; ``col_colors[j]`` is -1 for
    columns no JVP seeds. ``fwd_entry[k]`` says whether nonzero ``k`` (CSR order) is read
    from the JVP products (else from the VJP products).
    """

    def __init__(self, row_colors, col_colors, fwd_entry, by):
        self.row_colors, self.col_colors = row_colors, col_colors
        self.fwd_entry, self.by = fwd_entry, by

    @property
    def n_jvp(self) -> int:
        return ncolors(self.col_colors)

    @property
    def n_vjp(self) -> int:
        return ncolors(self.row_colors)

    @property
    def passes(self) -> int:
        return self.n_jvp + self.n_vjp


def _split_rows(P: sp.csr_matrix, rows: np.ndarray) -> Bicoloring:
    m, n = P.shape
    in_r = np.zeros(m, bool)
    in_r[rows] = True
    row_colors = np.full(m, -1, np.int64)
    if in_r.any():
        sub = row_coloring(P[np.flatnonzero(in_r)])
        row_colors[np.flatnonzero(in_r)] = sub
    rest = sp.diags((~in_r).astype(np.float32)) @ sp.csr_matrix(P, dtype=np.float32)
    rest = sp.csr_matrix(rest)
    rest.eliminate_zeros()
    col_colors = np.full(n, -1, np.int64)
    used = np.flatnonzero(np.diff(rest.tocsc().indptr) > 0)
    if used.size:
        col_colors[used] = column_coloring(rest[:, used])
    entry_rows = np.repeat(np.arange(m), np.diff(P.indptr))
    return Bicoloring(row_colors, col_colors, ~in_r[entry_rows], "rows")


def _split_cols(P: sp.csr_matrix, cols: np.ndarray) -> Bicoloring:
    """The column split: the row split of ``P^T`` with the roles of JVPs and VJPs swapped."""
    t = _split_rows(sp.csr_matrix(P.T), cols)
    in_c = np.zeros(P.shape[1], bool)
    in_c[cols] = True
    return Bicoloring(t.col_colors, t.row_colors, in_c[P.indices], "columns")


def _split_bound(P: sp.csr_matrix, chosen: np.ndarray, by_rows: bool) -> int:
    """A lower bound on a split's passes: the chosen rows' row coloring needs at least
    the most nonzeros any column has among them, the rest's column coloring at least
    the most nonzeros any remaining row has (and the same with rows and columns swapped)."""
    entry_rows = np.repeat(np.arange(P.shape[0]), np.diff(P.indptr))
    entry_cols = P.indices
    a, b = (entry_rows, entry_cols) if by_rows else (entry_cols, entry_rows)
    inside = chosen[a]
    first = np.bincount(b[inside]).max(initial=0)
    second = np.bincount(a[~inside]).max(initial=0)
    return int(first + second)


def _thresholds(counts: np.ndarray) -> np.ndarray:
    return np.unique(counts)[::-1][:8]


def bicoloring_lower_bound(P: sp.spmatrix) -> int:
    """A lower bound on the passes of any split :func:`bicoloring` tries (cheap: counts)."""
    P = sp.csr_matrix(P, dtype=bool)
    P.sum_duplicates()
    m, n = P.shape
    best = m + n
    col_nnz = np.bincount(P.indices, minlength=n)      # no duplicates in a canonical P
    for counts, by_rows in ((np.diff(P.indptr), True), (col_nnz, False)):
        for t in _thresholds(counts):
            chosen = counts >= t
            if chosen.all() or not chosen.any():
                continue
            best = min(best, _split_bound(P, chosen, by_rows))
    return best


def bicoloring(P: sp.spmatrix, upper: int | None = None) -> Bicoloring | None:
    """The cheapest row split or column split over a few density thresholds (fewest
    JVPs + VJPs), or ``None`` when no split beats ``upper`` passes."""
    P = sp.csr_matrix(P, dtype=bool)
    P.sort_indices()
    m, n = P.shape
    if m == 0 or n == 0:
        return None
    best = None
    limit = upper if upper is not None else m + n
    row_nnz = np.diff(P.indptr)
    col_nnz = np.diff(P.tocsc().indptr)
    for counts, split in ((row_nnz, _split_rows), (col_nnz, _split_cols)):
        # thresholds: rows denser than t go to the other mode; a handful of candidates
        for t in _thresholds(counts):
            chosen = np.flatnonzero(counts >= t)
            if chosen.size >= min(limit, max(m, n)):
                continue
            if chosen.size == 0 or chosen.size == counts.size:
                continue
            if _split_bound(P, counts >= t, split is _split_rows) >= limit:
                continue
            cand = split(P, chosen)
            if cand.passes < limit:
                best, limit = cand, cand.passes
    return best


def star_coloring(P: sp.spmatrix) -> np.ndarray:
    """Star coloring of the symmetric pattern ``P`` (its diagonal ignored).

    Greedy, in the order of Gebremedhin, Manne & Pothen's Algorithm 4.1: a vertex ``v``
    may not take the color of a neighbour ``w``, nor the color of a colored ``x`` two
    steps away through ``w`` when ``w`` is uncolored, or when ``w`` is colored and ``x``
    has another neighbour of ``w``'s color (that would make a two-colored path on four
    vertices).
    """
    S = sp.csr_matrix(P, dtype=np.float32)
    S = sp.csr_matrix(((S + S.T) > 0).astype(np.float32))
    S.setdiag(0)
    S.eliminate_zeros()
    n = S.shape[0]
    indptr, indices = S.indptr.tolist(), S.indices.tolist()
    nbrs = [indices[indptr[v]:indptr[v + 1]] for v in range(n)]
    colors = [-1] * n
    for v in range(n):
        forbidden = set()
        for w in nbrs[v]:
            cw = colors[w]
            if cw >= 0:
                forbidden.add(cw)
            for x in nbrs[w]:
                if x == v:
                    continue
                cx = colors[x]
                if cx < 0:
                    continue
                if cw < 0:
                    forbidden.add(cx)
                else:
                    for y in nbrs[x]:
                        if y != w and colors[y] == cw:
                            forbidden.add(cx)
                            break
        c = 0
        while c in forbidden:
            c += 1
        colors[v] = c
    return np.asarray(colors, np.int64)


# ----------------------------------------------------------------------------- validity


def is_valid_column_coloring(P: sp.spmatrix, colors: np.ndarray) -> bool:
    """No row has two nonzeros in columns of one color."""
    P = sp.csr_matrix(P, dtype=bool)
    rows = np.repeat(np.arange(P.shape[0]), np.diff(P.indptr))
    keys = rows * (ncolors(colors) + 1) + colors[P.indices]
    return np.unique(keys).size == keys.size


def is_valid_star_coloring(P: sp.spmatrix, colors: np.ndarray) -> bool:
    """Distance-1 proper, and every two-colored connected subgraph is a star."""
    S = sp.csr_matrix(P, dtype=np.float32)
    S = sp.csr_matrix(((S + S.T) > 0).astype(np.float32))
    S.setdiag(0)
    S.eliminate_zeros()
    r, c = S.nonzero()
    if np.any(colors[r] == colors[c]):
        return False
    k = ncolors(colors)
    for a in range(k):
        for b in range(a + 1, k):
            keep = ((colors[r] == a) & (colors[c] == b)) | ((colors[r] == b) & (colors[c] == a))
            if not keep.any():
                continue
            sub = sp.csr_matrix((np.ones(int(keep.sum())), (r[keep], c[keep])), shape=S.shape)
            ncomp, label = sp.csgraph.connected_components(sub, directed=False)
            deg = np.diff(sub.indptr)
            edges = np.bincount(label, weights=deg, minlength=ncomp) / 2
            verts = np.bincount(label[deg > 0], minlength=ncomp)
            maxdeg = np.zeros(ncomp)
            np.maximum.at(maxdeg, label, deg)
            comps = verts > 0
            # a tree (edges = vertices - 1) whose hub touches every other vertex
            if np.any(edges[comps] != verts[comps] - 1) or np.any(maxdeg[comps] < verts[comps] - 1):
                return False
    return True
