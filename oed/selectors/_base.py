"""What every selector shares: the estimator contract and input checks.

Selectors follow scikit-learn's estimator contract: ``__init__`` only stores
keyword parameters, ``fit(X, *, X_train=None)`` validates, selects and sets
``selected_idx_`` (pool rows in pick order), ``gains_`` and ``n_selected_``,
then returns ``self``.
"""

from __future__ import annotations

import warnings
from typing import Protocol, runtime_checkable

import numpy as np

from oed.errors import InputError, NotFittedError
from oed.information import DesignBlocks, as_blocks, check_features


@runtime_checkable
class Selector(Protocol):
    """Structural type of a selector (anything with this ``fit`` and these attributes)."""

    selected_idx_: np.ndarray
    gains_: np.ndarray
    n_selected_: int

    def fit(self, X, *, X_train=None) -> "Selector": ...


class SelectorMixin:
    """Shared validation and parameter access for selectors."""

    def get_params(self) -> dict:
        """Constructor parameters, as scikit-learn's ``get_params(deep=False)``."""
        import inspect

        names = [
            p for p in inspect.signature(type(self).__init__).parameters if p != "self"
        ]
        return {name: getattr(self, name) for name in names}

    def _validate(self, X, X_train, *, blocks: bool = False):
        """Check inputs; returns ``(X, X_train, k)``.

        ``X``/``X_train`` may be arrays (n, d) or :class:`DesignBlocks`. With
        ``blocks=False`` blocks become their energy rows (structure features);
        with ``blocks=True`` both come back as DesignBlocks.
        """
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


def check_is_fitted(selector) -> None:
    """Raise :class:`NotFittedError` unless ``selector.fit`` has run."""
    if not hasattr(selector, "selected_idx_"):
        raise NotFittedError(f"{type(selector).__name__} is not fitted: call fit(X) first")
