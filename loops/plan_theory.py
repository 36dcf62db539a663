"""The theory check of ``oed plan``: the GAP's own sparse-GP posterior, fitted in closed form.

The proxy forecast (:mod:`loops.plan`) runs ``gap_fit``; this check needs no fit. A sparse GAP's
prediction is the posterior mean of a linear model on its kernel features, rows R = φ(A) whitened
by its prior K_MM/δ² and divided by σ_E·N and σ_F (:meth:`loops.gap.GAPModel.feature_spec`,
``prior="kmm"``), with sparse points picked among the configurations fitted, as gap_fit does.
For a set of labelled configurations:

1. the noise and prior scales come from the marginal likelihood of its labels
   (:func:`oed.forecast.calibrate`; Rasmussen & Williams 2006, §5.4), so λ = c²/s²;
2. the error on unseen configurations is estimated from the labels alone: exact
   leave-one-configuration-out residuals of the ridge fit (:func:`oed.risk.grouped_loo_residuals`)
   for MAEs, and KARE / GCV (Jacot et al., NeurIPS 2020; :func:`oed.risk.row_kare`) for the
   force RMSE.

Applied to the DFT-labelled seed set and to its proxy labels it gives an independent DFT/proxy
error ratio to set against the cross-validated one the forecast uses; applied to nested random
subsets of the proxy-labelled pool at each budget (and multiplied by the calibration ratio) it
gives a random-picking learning curve that no simulated fit produced, with a power law beyond.
Every number says which source it comes from. Not for MACE (no closed-form posterior).
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from ase import Atoms

__all__ = ["cached_check", "sparse_gp_estimate", "theory_check"]

SOURCE = ("sparse-GP posterior mean on this GAP's kernel features (prior K_MM/δ², sparse points from the "
          "configurations fitted; no 2-body term), marginal-likelihood noise and prior scales; MAEs from exact "
          "leave-one-configuration-out residuals, force RMSE from KARE/GCV")


def sparse_gp_estimate(frames: Sequence[Atoms], spec) -> dict:
    """Label-based error estimates of the sparse-GP fit to ``frames`` (module notes).

    Parameters
    ----------
    frames : list of ase.Atoms
        Labelled configurations (reference energy and forces), at least 3.
    spec : oed.design.FeatureSpec
        ``kind="gap-kernel"``, ``forces=True`` (:meth:`loops.gap.GAPModel.feature_spec`).

    Returns
    -------
    dict
        ``force_mae`` (meV/Å) and ``energy_mae`` (meV/atom) from leave-one-configuration-out;
        ``force_rmse_kare`` (meV/Å); ``noise_scale``, ``prior_scale``, ``n_features``, ``n_rows``.

    Raises
    ------
    InputError
        Configurations without labels, fewer than 3.
    """
    from oed.design import design_features, design_labels
    from oed.errors import InputError
    from oed.forecast import calibrate
    from oed.risk import grouped_loo_residuals, hat_spectrum, row_kare

    if len(frames) < 3:
        raise InputError(f"the sparse-GP estimate needs at least 3 labelled configurations, got {len(frames)}")
    blocks, _, _ = design_features(list(frames), spec)
    y = design_labels(list(frames), spec)
    if y is None:
        raise InputError("the sparse-GP estimate needs reference energies and forces on every configuration")
    rows, offsets = blocks.rows, np.asarray(blocks.offsets)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # too few rows for the features is reported in the result
        cal = calibrate(rows, y)
    spectrum = hat_spectrum(rows, cal.reg)  # one SVD for both estimates
    loo = grouped_loo_residuals(rows, y, cal.reg, offsets, spectrum=spectrum)
    energy = np.zeros(len(y), dtype=bool)
    energy[offsets[:-1]] = True  # each block: its energy row, then 3N force rows
    kare_terms = row_kare(rows, y, cal.reg, spectrum=spectrum)
    return {
        "force_mae": float(np.mean(np.abs(loo[~energy])) * spec.sigma_force * 1000),
        "energy_mae": float(np.mean(np.abs(loo[energy])) * spec.sigma_energy * 1000),
        "force_rmse_kare": float(np.sqrt(np.mean(kare_terms[~energy])) * spec.sigma_force * 1000),
        "noise_scale": cal.noise_scale, "prior_scale": cal.prior_scale,
        "n_features": int(rows.shape[1]), "n_rows": int(rows.shape[0]),
    }


def theory_check(model, train: Sequence[Atoms], train_px: Sequence[Atoms | None], pool_px: Sequence[Atoms],
                 budgets: Sequence[int], ratios: dict, *, seed: int = 0, log=print) -> dict:
    """The ``theory`` block of ``plan.json`` (module notes).

    Parameters
    ----------
    model : loops.gap.GAPModel (unfitted)
        Its settings fix the features; any other model gives ``{"source": "not available ..."}``.
    train, train_px
        The DFT-labelled seed set and its proxy labels (None where the proxy failed); may be empty.
    pool_px
        Proxy-labelled pool (configurations marked ``label_failed`` are skipped).
    budgets
        Budgets of the random-picking curve (those above the labelled pool are left out).
    ratios
        The forecast's calibration ratios (``{metric: (ratio, lower, upper)}``): the curve is
        moved to the DFT level with them, as the simulated curves are.
    """
    from loops.oracles import LABEL_FAILED
    from loops.plan import fit_power_law

    if not hasattr(model, "feature_spec"):
        return {"source": f"not available for {type(model).__name__}: no closed-form posterior"}
    from loops.errors import SetupError

    t0 = time.perf_counter()
    try:
        spec = model.feature_spec(forces=True, prior="kmm")
    except SetupError as exc:  # e.g. a sparse method the kernel features cannot follow
        return {"source": f"not available: {exc}"}
    out: dict = {"source": SOURCE}
    ok = [i for i, a in enumerate(train_px) if a is not None]
    if len(ok) >= 3:
        log(f"theory check: sparse-GP estimates on the {len(ok)} seed configurations (DFT and proxy labels)")
        dft = sparse_gp_estimate([train[i] for i in ok], spec)
        prx = sparse_gp_estimate([train_px[i] for i in ok], spec)
        out["seed_set"] = {"n": len(ok), "dft": dft, "proxy": prx,
                           "force_mae_ratio": dft["force_mae"] / prx["force_mae"],
                           "energy_mae_ratio": dft["energy_mae"] / prx["energy_mae"],
                           "cv_force_mae_ratio": float(ratios["force_mae"][0])}
    usable = [a for a in pool_px if not a.info.get(LABEL_FAILED)]
    order = np.random.default_rng(seed).permutation(len(usable))
    ks = sorted(int(k) for k in budgets if 3 <= int(k) <= len(usable))
    curve: dict = {"budgets": ks, "force_mae": [], "energy_mae": [], "force_mae_proxy": [], "energy_mae_proxy": []}
    for k in ks:
        log(f"theory check: random {k} of the proxy-labelled pool")
        est = sparse_gp_estimate([usable[i] for i in order[:k]], spec)
        for metric in ("force_mae", "energy_mae"):
            curve[f"{metric}_proxy"].append(est[metric])
            curve[metric].append(est[metric] * float(ratios[metric][0]))
    if len(ks) >= 2:
        a, b = fit_power_law(ks, curve["force_mae"])
        curve["power_law"] = {"force_mae": {"prefactor": a, "exponent": b}}
    out["random"] = curve
    out["seconds"] = round(time.perf_counter() - t0, 2)
    return out


def cached_check(config, train, train_px, pool_px, budgets, ratios, out: Path, log=print) -> dict | None:
    """:func:`theory_check` for ``oed plan`` (``config``: :class:`loops.plan.PlanConfig`), cached in
    ``out/theory.json`` by pool, seed set, proxy, model settings, budgets and calibration ratios.
    None when ``config.theory`` is off."""
    if not config.theory:
        return None
    from loops.models import make_model
    from loops.plan import _settings
    from loops.rundir import read_json
    from loops.settings import fingerprint_fields
    from oed.io import atomic_write_text, pool_hash

    key = {"pool": pool_hash(pool_px), "train": pool_hash(list(train)) if train else None,
           "proxy": config.proxy, "model": config.model,
           "settings": fingerprint_fields(config.model_settings or _settings(config)), "budgets": list(budgets),
           "ratios": {m: [float(x) for x in r] for m, r in ratios.items()}}
    cache = out / "theory.json"
    known = read_json(cache, {})
    if known.get("key") != key:
        model = make_model(config.model, config.model_settings, seed=0)
        known = {"key": key, "theory": theory_check(model, train, train_px, pool_px, budgets, ratios, log=log)}
        atomic_write_text(cache, json.dumps(known, indent=1))
    return known["theory"]
