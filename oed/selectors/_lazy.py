"""Lazy greedy: the same picks as plain greedy for scores that only fall, with far fewer evaluations.

Plain greedy rescores every candidate after every pick: for a pool of n rows of d features that
is an (n, d) pass per pick, memory-bound on a CPU (10⁵ × 2000 float64 is 1.6 GB read per pick).
Where a candidate's score can only fall as picks are added — FPS's distance to the selected set
(a minimum over a growing set), D-optimality's information gain ½ log(1 + xᵀΣx) (Σ shrinks; log det
is submodular) — a score computed earlier is an upper bound on the score now. Minoux's accelerated
greedy keeps those bounds in a max-heap and rescores only the candidate on top until the top is
current: that candidate is the argmax, because every other score is at most its bound. Ties go to
the lowest index, as in plain greedy, so the picks are plain greedy's (up to the last bits of the
arithmetic, which is done in another order).

M. Minoux, "Accelerated greedy algorithms for maximizing submodular set functions", in
Optimization Techniques, LNCIS 7, 234–243 (Springer, 1978), doi:10.1007/BFb0006528.

Here: :func:`lazy_greedy` (the driver), :class:`LazyFPS` and :class:`LazyDOptimal` (the exact
rescoring of one candidate). NumPy on the CPU; on a GPU the plain passes are bandwidth-cheap and
the selectors keep them.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable

import numpy as np
from scipy.linalg import solve_triangular

__all__ = ["MAX_LAZY_FPS_PICKS", "LazyDOptimal", "LazyFPS", "lazy_fps", "lazy_greedy", "use_lazy"]


#: Most picks lazy FPS makes: it keeps the (k, k) pick-to-pick distances (200 MB at 5000).
MAX_LAZY_FPS_PICKS = 5000


def use_lazy(lazy, device, n_picks: int = 0, max_picks: int | None = None) -> bool:
    """Whether a selector's ``lazy`` setting (True, False or "auto": on a CPU only) means lazy here.

    With ``max_picks``, more than that many picks take the plain passes whatever the setting.

    Raises
    ------
    InputError
        ``lazy`` is not True, False or "auto".
    """
    from oed.errors import InputError

    if isinstance(lazy, str) and lazy == "auto":
        wanted = str(device).startswith("cpu")
    elif isinstance(lazy, (bool, np.bool_)):
        wanted = bool(lazy)
    else:
        raise InputError(f"lazy must be True, False or 'auto', got {lazy!r}")
    return wanted and (max_picks is None or n_picks <= max_picks)


def lazy_greedy(bounds: np.ndarray, rescore: Callable[[np.ndarray, np.ndarray], np.ndarray],
                add: Callable[[int], None], k: int, *, current: bool,
                batch: int = 1) -> tuple[np.ndarray, np.ndarray, int, np.ndarray]:
    """Pick ``k`` candidates by lazy greedy.

    Parameters
    ----------
    bounds : ndarray, shape (n,)
        Upper bounds of every candidate's score now (``-inf``: never to be picked).
    rescore : callable ``(rows, since) -> scores``
        Exact scores of candidates ``rows`` (int array) given every pick so far; ``since`` holds,
        per row, the number of picks when its bound was last made exact (-1: never), so that a
        rescore can use only the later picks.
    add : callable ``(j) -> None``
        Records pick j (after it is chosen, before the next rescore).
    k : int
        Number of picks (at most the number of candidates with a finite bound).
    current : bool
        Whether ``bounds`` are already the exact scores (then nothing is rescored before the first pick).
    batch : int, default 1
        Stale candidates taken off the heap and rescored together (a matrix product instead of
        vector ones); rescoring more than needed costs time, never exactness.

    Returns
    -------
    picks : ndarray of int, shape (k,)
    gains : ndarray of float, shape (k,)
        Each pick's exact score when it was picked.
    n_rescored : int
        Rescores made (plain greedy makes ``n`` per pick).
    since : ndarray of int, shape (n,)
        Picks made when each bound was last exact (-1: never): what a final exact pass can skip.
    """
    n = len(bounds)
    heap = [(-float(b), i) for i, b in enumerate(bounds) if b > -np.inf]
    heapq.heapify(heap)
    since = np.full(n, 0 if current else -1, dtype=np.int64)
    picks, gains, rescored = [], [], 0
    for t in range(k):
        while True:
            stale = []
            while heap and len(stale) < batch and since[heap[0][1]] != t:
                stale.append(heapq.heappop(heap)[1])
            if not stale:  # the top is exact, and at least every other bound: the argmax
                neg, i = heapq.heappop(heap)
                break
            rows = np.asarray(stale, dtype=np.int64)
            scores = rescore(rows, since[rows])
            rescored += len(rows)
            since[rows] = t
            for i, score in zip(stale, scores):
                heapq.heappush(heap, (-float(score), i))
        picks.append(i)
        gains.append(-neg)
        add(i)
    return np.asarray(picks, dtype=np.int64), np.asarray(gains, dtype=float), rescored, since


class LazyFPS:
    """Farthest-point sampling state for :func:`lazy_greedy`: squared distance to the selected set.

    Parameters
    ----------
    X : ndarray, shape (n, d)
        Pool features.
    d2 : ndarray, shape (n,)
        Squared distance of every row to what is already selected (the training rows, or the
        first pick); exact. The picks of :func:`lazy_greedy` are added to it.
    capacity : int
        Picks to make room for.
    first : int or None
        The first pick, when ``d2`` is the distance to it (then rows know their nearest pick).

    A rescore compares a row only with the picks it has not seen, and of those only with the
    ones the triangle inequality leaves in play: with c the row's nearest pick at distance r, a
    pick p with ‖p − c‖ ≥ 2r cannot come closer than r (Elkan, ICML 2003, for k-means). The
    pick-to-pick distances cost one (t, d) product per pick. The squared distance uses
    skmatter's formula ‖x‖² + ‖y‖² − 2x·y, as the plain FPS does.
    """

    #: Slack on the triangle-inequality test, for the rounding of ‖x‖² + ‖y‖² − 2x·y.
    SLACK = 1.0 + 1e-6

    def __init__(self, X: np.ndarray, d2: np.ndarray, capacity: int, first: int | None = None) -> None:
        self.X = X
        self.norms = np.einsum("ij,ij->i", X, X)
        self.d2 = np.array(d2, dtype=float)
        size = capacity + (first is not None)
        self.C = np.zeros((size, X.shape[1]))  # pick features, contiguous
        self.D = np.zeros((size, size))  # squared pick-to-pick distances
        self.nearest = np.full(len(X), -1, dtype=np.int64)  # nearest pick (-1: a training row)
        self.picks: list[int] = []
        self.pick_idx = np.zeros(size, dtype=np.int64)  # the picks' pool indices, as an array
        self.offset = 0
        if first is not None:
            self._append(first)
            self.nearest[:] = 0
            self.offset = 1  # lazy_greedy's pick t is pick t + 1 here

    def _append(self, j: int) -> None:
        t = len(self.picks)
        self.C[t] = self.X[j]
        if t:
            cn = self.norms[self.picks]
            self.D[t, :t] = self.D[:t, t] = np.clip(cn + self.norms[j] - 2.0 * (self.C[:t] @ self.X[j]), 0.0, None)
        self.picks.append(j)
        self.pick_idx[t] = j
        self.d2[j] = 0.0
        self.nearest[j] = t

    def _unseen(self, i: int, since: int) -> np.ndarray:
        lo = max(since, 0) + self.offset
        new = np.arange(lo, len(self.picks))
        c = self.nearest[i]
        if c >= 0 and len(new):
            new = new[self.D[c, lo : len(self.picks)] < 4.0 * self.d2[i] * self.SLACK]
        return new

    def rescore(self, rows: np.ndarray, since: np.ndarray) -> np.ndarray:
        return np.array([self._rescore(int(i), int(s)) for i, s in zip(rows, since)])

    def _rescore(self, i: int, since: int) -> float:
        new = self._unseen(i, since)
        if len(new):
            d2 = self.norms[i] + self.norms[self.pick_idx[new]] - 2.0 * (self.C[new] @ self.X[i])
            best = int(np.argmin(d2))
            if d2[best] < self.d2[i]:
                self.d2[i], self.nearest[i] = float(d2[best]), int(new[best])
        return self.d2[i]

    def add(self, j: int) -> None:
        self._append(j)

    def finish(self, since: np.ndarray) -> np.ndarray:
        """Exact squared distances of every row to the selected set, shape (n,).

        Rows are taken by nearest pick; each group is compared with the unseen picks that the
        triangle inequality leaves in play for its farthest member.
        """
        picks = np.asarray(self.picks, dtype=np.int64)
        lo_of = np.maximum(since, 0) + self.offset
        stale = np.flatnonzero(lo_of < len(picks))
        order = stale[np.argsort(self.nearest[stale], kind="stable")]
        groups = np.split(order, np.flatnonzero(np.diff(self.nearest[order])) + 1) if len(order) else []
        for rows in groups:
            c, lo = self.nearest[rows[0]], int(lo_of[rows].min())
            new = np.arange(lo, len(picks))
            if c >= 0:
                new = new[self.D[c, lo : len(picks)] < 4.0 * self.d2[rows].max() * self.SLACK]
            if len(new) == 0:
                continue
            d2 = self.norms[rows, None] + self.norms[None, picks[new]] - 2.0 * (self.X[rows] @ self.C[new].T)
            self.d2[rows] = np.minimum(self.d2[rows], d2.min(axis=1))
        self.d2[picks] = 0.0
        return self.d2


class LazyDOptimal:
    """Greedy D-optimality state for :func:`lazy_greedy` on energy rows (one row per candidate).

    With A the rows selected so far (training rows first) and Λ = λI + AᵀA, the gain of x is
    ½ log(1 + xᵀΛ⁻¹x). By Woodbury, xᵀΛ⁻¹x = (xᵀx − ‖Qx‖²)/λ with Q = L⁻¹A and L Lᵀ = λI + AAᵀ:
    Q grows by one row per pick (with c = Qa and l² = λ + aᵀa − cᵀc, the new row is (a − Qᵀc)/l)
    and its earlier rows never change, so a rescore costs a (rows added since, d) product instead
    of plain greedy's (n, d) pass per pick.

    Parameters
    ----------
    X : ndarray, shape (n, d)
    reg : float
        Prior precision λ.
    X_train : ndarray, shape (m0, d) or None
    capacity : int
        Picks to make room for.
    """

    def __init__(self, X: np.ndarray, reg: float, X_train: np.ndarray | None, capacity: int) -> None:
        self.X, self.reg = X, float(reg)
        self.sq = np.einsum("ij,ij->i", X, X)
        self.residual = self.sq.copy()  # xᵀx − ‖Q x‖² over the rows of Q each candidate has seen
        self.seen = np.zeros(len(X), dtype=np.int64)
        m0 = 0 if X_train is None else len(X_train)
        self.Q = np.zeros((m0 + capacity, X.shape[1]))
        self.log_diag = 0.0  # Σ log diag L
        self.m = 0
        if m0:
            L = np.linalg.cholesky(self.reg * np.eye(m0) + X_train @ X_train.T)
            self.Q[:m0] = solve_triangular(L, X_train, lower=True, check_finite=False)
            self.log_diag = float(np.log(np.diag(L)).sum())
            self.m = m0

    def quadratic(self, rows: np.ndarray) -> np.ndarray:
        """xᵀΛ⁻¹x for pool rows ``rows`` now, shape (len(rows),), clamped at 0.

        Earlier rows of Q never change as rows are added, so each candidate keeps xᵀx − ‖Q x‖²
        over the rows it has seen, and a rescore takes only the rows added since.
        """
        stale = rows[self.seen[rows] < self.m]
        if len(stale):
            # by rows seen: a group shares one product over the rows of Q the least up to date has not seen
            stale = stale[np.argsort(self.seen[stale], kind="stable")]
            seen = self.seen[stale]
            cuts = np.flatnonzero(np.diff(seen) > max(8, (self.m - seen[0]) // 8)) + 1
            for group in np.split(stale, cuts):
                g_seen = self.seen[group]
                lo = int(g_seen[0])
                C = self.Q[lo : self.m] @ self.X[group].T  # (m − lo, len(group))
                if g_seen[-1] > lo:
                    C[np.arange(lo, self.m)[:, None] < g_seen[None, :]] = 0.0  # rows already counted
                self.residual[group] -= np.einsum("ij,ij->j", C, C)
            self.seen[stale] = self.m
        return np.clip(self.residual[rows] / self.reg, 0.0, None)

    def gains(self, chunk: int = 4096) -> np.ndarray:
        """Every candidate's gain ½ log(1 + xᵀΛ⁻¹x), nats, shape (n,)."""
        out = np.empty(len(self.X))
        for s in range(0, len(self.X), chunk):
            out[s : s + chunk] = 0.5 * np.log1p(self.quadratic(np.arange(s, min(s + chunk, len(self.X)))))
        return out

    def rescore(self, rows: np.ndarray, since: np.ndarray) -> np.ndarray:
        return 0.5 * np.log1p(self.quadratic(rows))

    def add(self, j: int) -> None:
        a, m = self.X[j], self.m
        c = self.Q[:m] @ a
        l2 = max(self.reg + self.sq[j] - c @ c, 1e-300)
        self.Q[m] = (a - self.Q[:m].T @ c) / np.sqrt(l2)
        self.log_diag += 0.5 * np.log(l2)
        self.m = m + 1

    def log_det_information(self) -> float:
        """log det Λ = (d − m) log λ + log det(λI + AAᵀ), nats."""
        return float((self.X.shape[1] - self.m) * np.log(self.reg) + 2.0 * self.log_diag)


def lazy_fps(X: np.ndarray, X_train: np.ndarray | None, k: int, start: int | None,
             weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """FPS (or, with ``weights`` w, the score w·d of GGFPS with a constant exponent) by lazy greedy.

    Parameters
    ----------
    X : ndarray, shape (n, d)
    X_train : ndarray, shape (m, d) or None
        Rows already selected (used when ``start`` is None).
    k : int
        Picks, the start included.
    start : int or None
        The first pick, taken whatever its score (no training set).
    weights : ndarray, shape (n,), optional
        Fixed non-negative per-row weights of the distance.

    Returns
    -------
    picks : ndarray of int, shape (k,)
    gains : ndarray, shape (k,)
        Each pick's score w·d when picked (d = sign(d²)·√|d²|, the plain selectors' ordering); the
        start's is ``inf``.
    d2 : ndarray, shape (n,)
        Final squared distance of every row to the training rows and picks (0 for picks).
    n_rescored : int
    """
    norms = np.einsum("ij,ij->i", X, X)
    if start is not None:  # the first pick, then every row's exact distance to it (one pass)
        d2 = norms + norms[start] - 2.0 * (X @ X[start])
        head, head_gain, k = [start], [np.inf], k - 1
    else:
        import torch

        from oed.selectors.fps import _min_squared_distance_to  # plain FPS's start state, chunked

        d2 = _min_squared_distance_to(torch.as_tensor(X), torch.as_tensor(norms),
                                      torch.as_tensor(np.asarray(X_train, dtype=float))).numpy()
        head, head_gain = [], []
    state = LazyFPS(X, d2, k, first=start)

    def score(d2_rows: np.ndarray, rows: np.ndarray) -> np.ndarray:
        d = np.sign(d2_rows) * np.sqrt(np.abs(d2_rows))
        return d if weights is None else weights[rows] * d

    bounds = score(state.d2, np.arange(len(X)))
    if start is not None:
        bounds[start] = -np.inf  # picked
    picks, gains, rescored, since = lazy_greedy(bounds, lambda rows, s: score(state.rescore(rows, s), rows),
                                                state.add, k, current=True)
    return (np.concatenate([head, picks]).astype(np.int64), np.concatenate([head_gain, gains]),
            state.finish(since), rescored)
