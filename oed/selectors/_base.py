"""What every selector shares: the scikit-learn estimator contract, class-level tags and input checks.

Every selector is a :class:`SelectorBase`, i.e. a ``sklearn.base.BaseEstimator``:
``__init__`` only stores its parameters (so ``sklearn.base.clone``,
``get_params``/``set_params`` and ``repr`` work), and

    fit(X, *, X_train=None, y_train=None, X_target=None) -> self

validates, selects and sets ``selected_idx_`` (pool rows in pick order),
``gains_`` (one value per pick, in the unit the class tag ``gains_unit`` names),
``gains_unit_`` and ``n_selected_``. The tags say, without an instance, which
inputs and settings a selector uses, so callers need not inspect signatures.
"""

from __future__ import annotations

import warnings
from typing import ClassVar, Protocol, runtime_checkable

import numpy as np
from sklearn.base import BaseEstimator

from oed.errors import InputError, NotFittedError
from oed.information import DesignBlocks, as_blocks, check_features


@runtime_checkable
class Selector(Protocol):
    """Structural type of a selector (anything with this ``fit`` and these attributes)."""

    selected_idx_: np.ndarray
    gains_: np.ndarray
    n_selected_: int

    def fit(self, X, *, X_train=None, y_train=None, X_target=None) -> Selector: ...


class SelectorBase(BaseEstimator):
    """Base of every selector: scikit-learn's estimator contract plus what a selector uses.

    Subclasses take ``n_to_select`` as their first (positional) parameter and
    keyword-only settings after it, store them unchanged in ``__init__`` and
    implement ``fit(X, *, X_train=None, y_train=None, X_target=None)``.

    Tags (class attributes, readable on the class)
    ----------------------------------------------
    uses_target : bool
        ``fit`` uses ``X_target`` (rows whose predictive variance should fall).
        A selector without it raises :class:`~oed.errors.InputError` when given
        one, rather than ignore it.
    uses_labels : bool
        ``fit`` uses ``y_train`` (energies of the training rows). Selectors
        without it ignore ``y_train``: selection is label-free for them.
    uses_random_state : bool
        The constructor takes ``random_state``.
    uses_prior_precision : bool
        The constructor takes ``reg``, the prior precision λ of the
        linear-Gaussian model (default
        :data:`oed.information.DEFAULT_PRIOR_PRECISION`).
    uses_force_norms : bool
        ``fit`` takes, and requires, ``force_norms``: one force norm ‖F‖ per
        pool configuration (eV/Å, from a cheap model), checked by
        :func:`check_force_norms`. ``fit`` then has that one keyword more.
        Selectors without the tag have no such keyword, and
        :func:`oed.design.fit_selector` refuses force norms for them with an
        :class:`~oed.errors.InputError`, as it refuses a target.
    gains_unit : str
        What ``gains_`` measures ("nats", "variance reduction", "feature
        distance", "leverage", "cluster size").
    """

    uses_target: ClassVar[bool] = False
    uses_labels: ClassVar[bool] = False
    uses_random_state: ClassVar[bool] = False
    uses_prior_precision: ClassVar[bool] = False
    uses_force_norms: ClassVar[bool] = False
    gains_unit: ClassVar[str] = ""

    def _validate(self, X, X_train, X_target=None, *, blocks: bool = False):
        """Check inputs; returns ``(X, X_train, k)``.

        ``X``/``X_train`` may be arrays (n, d) or :class:`DesignBlocks`. With
        ``blocks=False`` blocks become their energy rows (structure features);
        with ``blocks=True`` both come back as DesignBlocks. ``X_target`` is
        only checked for being refused (``uses_target`` False); selectors that
        use it validate it themselves.

        Raises
        ------
        InputError
            A target given to a selector that does not use one, bad shapes or
            values, an empty pool or a ``n_to_select`` that is not a positive integer.
        """
        if X_target is not None and not self.uses_target:
            raise InputError(f"{type(self).__name__} does not use a target set (X_target); "
                             "use i-optimal or info-gain")
        if blocks:
            X = as_blocks(X)
            if X_train is not None:
                X_train = as_blocks(X_train)
                if X_train.n_features != X.n_features:
                    raise InputError(f"X_train has {X_train.n_features} features, expected {X.n_features}")
        else:
            X = X.energy_rows() if isinstance(X, DesignBlocks) else check_features(X)
            if X_train is not None:
                X_train = X_train.energy_rows() if isinstance(X_train, DesignBlocks) else X_train
                X_train = check_features(X_train, "X_train", n_features=X.shape[1])
        if len(X) == 0:
            raise InputError("the candidate pool is empty: nothing to select from")
        k = self.n_to_select
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise InputError(f"n_to_select must be a positive integer, got {k!r}")
        if k > len(X):
            warnings.warn(
                f"n_to_select={k} exceeds the pool size {len(X)}: selecting all {len(X)}",
                stacklevel=3,
            )
            k = len(X)
        return X, X_train, int(k)

    def _set_selection(self, picks, gains, unit: str | None = None) -> None:
        """Store the fitted selection: ``selected_idx_``, ``gains_``, ``n_selected_``, ``gains_unit_``."""
        self.selected_idx_ = picks
        self.gains_ = gains
        self.n_selected_ = len(picks)
        self.gains_unit_ = self.gains_unit if unit is None else unit


def check_force_norms(force_norms, n_pool: int) -> np.ndarray:
    """``force_norms`` as a float array of shape (n_pool,); eV/Å, finite and >= 0.

    Raises
    ------
    InputError
        Missing (None), not numeric, wrong shape, NaN/inf or negative values.
    """
    if force_norms is None:
        raise InputError("force_norms is required: one force norm ||F|| (eV/Å) per pool configuration")
    try:
        g = np.asarray(force_norms, dtype=float)
    except (TypeError, ValueError) as exc:
        raise InputError(f"force_norms must be numbers: {exc}") from exc
    if g.shape != (n_pool,):
        raise InputError(f"force_norms must have shape ({n_pool},), one per pool configuration, got {g.shape}")
    if not np.all(np.isfinite(g)):
        raise InputError("force_norms contains NaN or infinite values")
    if np.any(g < 0):
        raise InputError(f"force_norms must be >= 0 (they are norms), smallest is {g.min()}")
    return g


def check_is_fitted(selector) -> None:
    """Raise :class:`NotFittedError` unless ``selector.fit`` has run."""
    if not hasattr(selector, "selected_idx_"):
        raise NotFittedError(f"{type(selector).__name__} is not fitted: call fit(X) first")
