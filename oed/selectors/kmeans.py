"""k-means medoids: one representative pool point per cluster (scikit-learn KMeans)."""

from __future__ import annotations

import numbers
import warnings

import numpy as np

from oed.errors import InputError
from oed.selectors._base import SelectorBase


class KMeansMedoids(SelectorBase):
    """Cluster the pool with k-means and pick, per cluster, the member nearest its centroid.

    A representativeness baseline: the picks spread over the pool in
    proportion to its density (unlike FPS, which chases the edges). Clustering
    is ``sklearn.cluster.KMeans`` (k-means++ seeding, Lloyd iterations).
    Each pick is the pool member of its cluster with the smallest Euclidean
    distance to the centroid (ties to the lowest index); clusters are disjoint,
    so picks are distinct. Picks are ordered by decreasing cluster size (ties
    by cluster label).

    **With a training set** (``X_train``, m rows), pool and training rows are
    clustered together into k + m clusters, and the picks are the medoids of
    the k largest clusters (counted in pool points) that contain *no*
    training row. Why this choice: it is the clustering analogue of FPS
    treating the training rows as already selected. At most m clusters can
    hold a training row, so at least k training-free clusters exist; those are
    the regions of the pool the training set leaves uncovered, and a pool
    region already sampled by training rows costs a cluster but yields no
    pick. The alternative of clustering only the pool and re-ordering the
    medoids by distance from the training set was rejected: it would still
    place k picks where the training set already is, so it does not
    complement it. The cost is a k-means with k + m clusters over n + m points.

    If fewer than k suitable clusters come out (only possible with duplicate
    rows: k-means cannot make more non-empty clusters than there are distinct
    points), the remaining picks are the lowest unpicked pool indices, with
    gain 0, and a warning is issued.

    Parameters
    ----------
    n_to_select : int
        Number of clusters and picks k (truncated, with a warning, to the pool size).
    random_state : int, numpy.random.Generator, numpy.random.RandomState or None, default None
        Seed of k-means++ seeding; the same seed gives the same picks (a
        Generator is turned into an integer seed by one draw).
    n_init : int or "auto", default "auto"
        k-means restarts (best inertia kept), scikit-learn's ``n_init``; "auto"
        is one run with k-means++ seeding. Each run costs O(iterations · n · k · d).
    max_iter : int, default 300
        Lloyd iterations per restart.

    Attributes
    ----------
    selected_idx_ : ndarray of int, shape (n_selected_,)
        Pool indices in pick order, distinct.
    gains_ : ndarray of float, shape (n_selected_,)
        Size of each pick's cluster in pool points (how many pool points the
        pick represents); non-increasing.
    n_selected_ : int
    cluster_centers_ : ndarray, shape (n_selected_, n_features)
        Centroid of each pick's cluster, in pick order (NaN rows for fill-ins).
    inertia_ : float
        k-means objective (sum of squared distances to centroids, feature units²)
        of the clustering that was used (pool and training rows).

    Raises
    ------
    InputError
        From :meth:`fit`: bad shapes or values, an empty pool, bad parameters.

    References
    ----------
    S. Lloyd, IEEE Trans. Inf. Theory 28, 129 (1982); D. Arthur & S. Vassilvitskii,
    SODA 2007 (k-means++); scikit-learn ``sklearn.cluster.KMeans``.

    Examples
    --------
    >>> import numpy as np
    >>> X = np.array([[0.0], [0.1], [0.2], [0.25], [10.0], [10.1], [10.3]])
    >>> sel = KMeansMedoids(2, random_state=0).fit(X)
    >>> sel.selected_idx_.tolist(), sel.gains_.tolist()
    ([1, 5], [4.0, 3.0])
    """

    uses_random_state = True
    gains_unit = "cluster size"

    def __init__(self, n_to_select: int, *, random_state=None, n_init="auto", max_iter: int = 300) -> None:
        self.n_to_select = n_to_select
        self.random_state = random_state
        self.n_init = n_init
        self.max_iter = max_iter

    def _check_params(self) -> None:
        n_init = self.n_init
        if not (n_init == "auto" or (isinstance(n_init, numbers.Integral) and not isinstance(n_init, bool)
                                     and n_init >= 1)):
            raise InputError(f"n_init must be a positive integer or 'auto', got {n_init!r}")
        mi = self.max_iter
        if isinstance(mi, bool) or not isinstance(mi, numbers.Integral) or mi < 1:
            raise InputError(f"max_iter must be a positive integer, got {mi!r}")

    def fit(self, X, *, X_train=None, y_train=None, X_target=None) -> KMeansMedoids:
        """Select from the pool.

        Parameters
        ----------
        X : array (n_candidates, n_features) or DesignBlocks
            Structure features (for DesignBlocks, the energy rows).
        X_train : array (n_train, n_features) or DesignBlocks, optional
            Already labelled structures; picks come only from clusters free of them.
        y_train : ignored
            Label-free.
        X_target : None
            Not used (``uses_target`` is False): passing one raises InputError.

        Returns
        -------
        self

        Raises
        ------
        InputError
            Bad shapes, non-finite values, an empty pool, bad parameters, an ``X_target``.
        """
        from sklearn.cluster import KMeans
        from sklearn.exceptions import ConvergenceWarning

        X, X_train, k = self._validate(X, X_train, X_target)
        self._check_params()
        n = len(X)
        m = 0 if X_train is None else len(X_train)
        data = X if m == 0 else np.vstack([X, X_train])
        seed = self.random_state
        if isinstance(seed, np.random.Generator):  # scikit-learn takes ints or RandomState
            seed = int(seed.integers(2**31 - 1))
        km = KMeans(n_clusters=min(k + m, len(data)), n_init=self.n_init, max_iter=self.max_iter,
                    random_state=seed)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=ConvergenceWarning)  # duplicates: handled below
            labels = km.fit_predict(data)
        pool_labels, centers = labels[:n], km.cluster_centers_
        has_train = np.zeros(len(centers), dtype=bool)
        has_train[labels[n:]] = True
        sizes = np.bincount(pool_labels, minlength=len(centers))
        usable = np.flatnonzero(~has_train & (sizes > 0))
        order = usable[np.argsort(-sizes[usable], kind="stable")][:k]

        picks, gains, chosen_centers = [], [], []
        for c in order:
            members = np.flatnonzero(pool_labels == c)
            dist2 = ((X[members] - centers[c]) ** 2).sum(axis=1)
            picks.append(int(members[np.argmin(dist2)]))
            gains.append(float(sizes[c]))
            chosen_centers.append(centers[c])
        if len(picks) < k:
            warnings.warn(
                f"k-means found only {len(picks)} usable clusters for {k} picks (duplicate rows?): "
                "filling with the lowest unpicked pool indices (gain 0)",
                stacklevel=2,
            )
            rest = np.setdiff1d(np.arange(n), picks)[: k - len(picks)]
            picks += rest.tolist()
            gains += [0.0] * len(rest)
            chosen_centers += [np.full(X.shape[1], np.nan)] * len(rest)
        self._set_selection(np.asarray(picks, dtype=np.int64), np.asarray(gains, dtype=float))
        self.cluster_centers_ = np.asarray(chosen_centers).reshape(len(picks), X.shape[1])
        self.inertia_ = float(km.inertia_)
        return self
