"""Test-time training (TTT) of MACE on a cheap prior: lower out-of-distribution error without DFT.

Kreiman & Krishnapriyan (arXiv:2503.08674) train a force field with two heads on one shared
representation — one on the reference (DFT) labels, one on a cheap physical prior of the same
configurations — and, at test time, take a few gradient steps on the *prior* head's loss for the
test configurations (whose prior labels cost milliseconds), updating the shared representation,
before predicting with the reference head. No reference label of a test system is used.

:class:`TTTMACEModel` is the smallest wrapper that does this with mace-torch:

- :meth:`~TTTMACEModel.fit` labels the training configurations with GFN2-xTB (``loops.xtb``;
  their energies and forces, never mixed into the DFT files) and trains one MACE with two heads,
  ``dft`` and ``prior``, through run_train's ``--heads`` (mace-torch's multi-head training: one
  representation, a readout column, E0s and scale/shift per head). The xTB isolated-atom energies
  are the prior head's E0s.
- :meth:`~TTTMACEModel.predict` reads out the ``dft`` head (no TTT): a model like any other.
- :meth:`~TTTMACEModel.predict_ttt` labels the test configurations with xTB and, for each batch
  of ``TTTSettings.batch_size`` of them, takes ``steps`` Adam steps (learning rate ``lr``) on the
  prior head's loss (the training loss: ``energy_weight`` × (ΔE/N)² + ``forces_weight`` × ΔF², with
  the same weights as the fit) over the parameters named by ``update`` (default the
  representation: node embedding, interactions and products; the readouts stay as trained),
  predicts that batch with the ``dft`` head, and restores the trained weights before the next.

References
----------
T. Kreiman and A. S. Krishnapriyan, arXiv:2503.08674 (2025); Digital Discovery (2026),
DOI 10.1039/D5DD00260E. Y. Sun et al., "Test-time training with self-supervision for
generalization under distribution shifts", ICML 2020.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ase import Atoms

from loops.errors import SetupError
from loops.fitting import FitPlan, fmt_float, symbols_by_z
from loops.mace import TRAIN_FILE, VALID_FILE, MACEModel, MACESettings, _torch_state
from oed.errors import InputError
from oed.io import REF_ENERGY, REF_FORCES

__all__ = ["DFT_HEAD", "PRIOR_HEAD", "TTTMACEModel", "TTTSettings"]

DFT_HEAD, PRIOR_HEAD = "dft", "prior"
PRIOR_TRAIN, PRIOR_VALID = "prior_train.xyz", "prior_valid.xyz"
#: Parameter groups of a mace-torch model that ``update="representation"`` trains at test time.
REPRESENTATION = ("node_embedding", "interactions", "products")


@dataclass(frozen=True)
class TTTSettings:
    """How test-time training runs.

    Parameters
    ----------
    prior : {"gfn2-xtb", "gfn1-xtb"}, default "gfn2-xtb"
        The cheap method of the prior head (training and test configurations alike).
    steps : int, default 10
        Adam steps per test batch (0: no update, predict_ttt equals predict).
    lr : float, default 1e-3
        Adam learning rate.
    batch_size : int, default 8
        Test configurations adapted together (each batch starts from the trained weights).
    update : {"representation", "all"}, default "representation"
        Parameters updated at test time: node embedding, interactions and products, or every
        parameter (readouts, scale/shift included).
    """

    prior: str = "gfn2-xtb"
    steps: int = 10
    lr: float = 1e-3
    batch_size: int = 8
    update: str = "representation"

    def validate(self) -> None:
        """Raise :class:`~loops.errors.SetupError` naming the first bad field."""
        from loops.xtb import XTB_METHODS

        checks = (("prior", self.prior in XTB_METHODS), ("update", self.update in ("representation", "all")),
                  ("steps", isinstance(self.steps, int) and self.steps >= 0),
                  ("batch_size", isinstance(self.batch_size, int) and self.batch_size >= 1),
                  ("lr", isinstance(self.lr, (int, float)) and np.isfinite(self.lr) and self.lr > 0))
        for name, ok in checks:
            if not ok:
                raise SetupError(f"TTTSettings.{name} is invalid: {getattr(self, name)!r}")


def _prior_labels(frames: Sequence[Atoms], method: str, *, strict: bool = True) -> list[Atoms | None]:
    """Copies of ``frames`` with the prior's energy and forces as their REF labels.

    A configuration the prior cannot label (an SCF that does not converge) is an error with
    ``strict``, else ``None`` in its place.
    """
    from loops.xtb import label_many_xtb

    results = label_many_xtb(frames, method=method, workers=1, progress=False)
    bad = [r for r in results if not r.ok]
    if bad and strict:
        raise SetupError(f"{len(bad)} of {len(frames)} configurations have no {method} label "
                         f"(first: {bad[0].error}); the prior head needs all of them")
    out: list[Atoms | None] = []
    for frame, r in zip(frames, results):
        if not r.ok:
            out.append(None)
            continue
        a = frame.copy()
        a.info[REF_ENERGY] = r.atoms.info[REF_ENERGY]
        a.arrays[REF_FORCES] = np.array(r.atoms.arrays[REF_FORCES])
        a.info["level_of_theory"] = method
        out.append(a)
    return out


class TTTMACEModel(MACEModel):
    """A two-head MACE (reference and cheap prior) with test-time training on the prior (module notes).

    Parameters
    ----------
    settings : MACESettings or None
        Architecture and schedule of the shared model (``None``: defaults).
    ttt : TTTSettings or None
        The prior and the test-time steps (``None``: defaults).

    Attributes
    ----------
    prior_e0s_ : dict of str to float
        Isolated-atom energies of the prior (eV).
    ttt_seconds_ : float
        Wall time of the last :meth:`predict_ttt` per configuration (xTB labels included), s.
    ttt_skipped_ : tuple of int
        Positions, in the last :meth:`predict_ttt` call, of configurations the prior could not
        label: they are predicted as trained, without adaptation.
    """

    head = DFT_HEAD

    def __init__(self, settings: MACESettings | None = None, ttt: TTTSettings | None = None) -> None:
        super().__init__(settings)
        self.ttt = ttt if ttt is not None else TTTSettings()
        self.ttt.validate()

    def _plan(self, train: list[Atoms], e0s: Mapping[str, float], settings: MACESettings, work: Path) -> FitPlan:
        from loops.xtb import isolated_atom_energies_xtb

        plan = super()._plan(train, e0s, settings, work)
        dft_e0s = plan.fitted["e0s_"]
        prior_e0s = isolated_atom_energies_xtb(list(dft_e0s), method=self.ttt.prior)
        fit_set, valid = plan.inputs[TRAIN_FILE], plan.inputs[VALID_FILE]

        def table(e0: Mapping[str, float]) -> str:
            from ase.data import atomic_numbers

            return "{" + ", ".join(f"{atomic_numbers[s]}: {fmt_float(e0[s])}" for s in symbols_by_z(e0)) + "}"

        heads = ("{" + f"'{DFT_HEAD}': {{'train_file': '{TRAIN_FILE}', 'valid_file': '{VALID_FILE}', 'E0s': '{table(dft_e0s)}'}}, "
                 f"'{PRIOR_HEAD}': {{'train_file': '{PRIOR_TRAIN}', 'valid_file': '{PRIOR_VALID}', "
                 f"'E0s': '{table(prior_e0s)}'}}" + "}")  # run_train parses E0s from a string
        return dataclasses.replace(
            plan, argv=[*plan.argv, f"--heads={heads}"],
            inputs={**plan.inputs, PRIOR_TRAIN: _prior_labels(fit_set, self.ttt.prior),
                    PRIOR_VALID: _prior_labels(valid, self.ttt.prior)},
            fitted={**plan.fitted, "prior_e0s_": prior_e0s})

    def predict_ttt(self, frames: Sequence[Atoms]) -> tuple[np.ndarray, list[np.ndarray]]:
        """Energies (eV, shape (n,)) and forces (eV/Å, list of (n_atoms_i, 3)) after test-time training.

        A configuration the prior cannot label is predicted without adaptation and listed in
        :attr:`ttt_skipped_`.

        Raises
        ------
        NotFittedError, UnknownElementError, InputError
            As :meth:`predict`.
        """
        self._check_fitted()
        frames = list(frames)
        if not frames:
            return np.empty(0), []
        t0 = time.perf_counter()
        prior = _prior_labels(frames, self.ttt.prior, strict=False)
        model, _ = self._torch_model()
        trained = {k: v.detach().clone() for k, v in model.state_dict().items()}
        names = [n for n, _ in model.named_parameters()
                 if self.ttt.update == "all" or n.split(".")[0] in REPRESENTATION]
        if not names:
            raise SetupError("this MACE model has no node_embedding/interactions/products parameters to adapt")
        labelled = [i for i, p in enumerate(prior) if p is not None]
        skipped = [i for i, p in enumerate(prior) if p is None]
        energies = np.empty(len(frames))
        forces: list[np.ndarray | None] = [None] * len(frames)
        try:
            groups = [labelled[k:k + self.ttt.batch_size] for k in range(0, len(labelled), self.ttt.batch_size)]
            for group in groups + ([skipped] if skipped else []):
                if self.ttt.steps and group is not skipped:
                    self._adapt(model, [prior[i] for i in group], names)
                e, f = self.predict([frames[i] for i in group])
                for i, ei, fi in zip(group, e, f):
                    energies[i], forces[i] = ei, fi
                model.load_state_dict(trained)
        finally:
            model.load_state_dict(trained)
            model.requires_grad_(False)
        self.ttt_skipped_ = tuple(skipped)
        self.ttt_seconds_ = (time.perf_counter() - t0) / len(frames)
        return energies, forces

    def _predict_head(self, frames: Sequence[Atoms], head: str) -> np.ndarray:
        """Energies (eV) read out from ``head`` (``"dft"`` or ``"prior"``)."""
        model, device = self._torch_model()
        out = []
        with _torch_state(threads=self._settings().num_threads, device=device):
            for batch in self._batches(list(frames), model, device, head=head):
                res = model(batch.to_dict(), training=False, compute_force=False, compute_stress=False)
                out.append(res["energy"].detach().cpu().numpy().astype(float))
        return np.concatenate(out)

    def _adapt(self, model, labels: list[Atoms], names: list[str]) -> None:
        """``steps`` Adam steps on the prior head's loss over ``labels``, updating the parameters ``names``."""
        import torch

        s = self._settings()
        _, device = self._torch_model()
        params = dict(model.named_parameters())
        trainable = [params[n] for n in names]
        model.requires_grad_(False)
        for p in trainable:
            p.requires_grad_(True)
        optimiser = torch.optim.Adam(trainable, lr=float(self.ttt.lr))
        dtype = next(model.parameters()).dtype
        e_ref = torch.tensor([a.info[REF_ENERGY] for a in labels], dtype=dtype, device=device)
        f_ref = torch.tensor(np.concatenate([a.arrays[REF_FORCES] for a in labels]), dtype=dtype, device=device)
        n_atoms = torch.tensor([len(a) for a in labels], dtype=dtype, device=device)
        with _torch_state(threads=s.num_threads, device=device):
            batches = list(self._batches(labels, model, device, head=PRIOR_HEAD))
            if len(batches) != 1:
                raise InputError("TTTSettings.batch_size must not exceed MACESettings.predict_batch_size")
            for _ in range(self.ttt.steps):
                out = model(batches[0].to_dict(), training=True, compute_force=True, compute_stress=False)
                loss = (s.energy_weight * torch.mean(((out["energy"] - e_ref) / n_atoms) ** 2)
                        + s.forces_weight * torch.mean((out["forces"] - f_ref) ** 2))
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
        model.requires_grad_(False)
