"""MACE interatomic potentials trained with mace-torch's own trainer.

MACE (Batatia et al., "MACE: Higher Order Equivariant Message Passing Neural Networks for Fast
and Accurate Force Fields", NeurIPS 2022, arXiv:2206.07697) writes the energy of a
configuration as a sum of atomic energies read out from equivariant node features; each of its
message-passing layers builds many-body messages (body order ``correlation + 1``) from
spherical-harmonic edge features. Forces are minus the gradient of the energy.

:class:`MACESettings` (in :mod:`loops.mace_settings`, re-exported here) holds a small architecture
and training schedule (CPU training in minutes);
:class:`MACEModel` trains with ``python -m mace.cli.run_train`` in a subprocess and predicts
energies (eV), forces (eV/Å) and per-structure invariant descriptors in this process.

Notes on mace-torch (seen here, mace-torch 0.3.16, e3nn 0.4.4, torch 2.13):

- ``import mace`` sets ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` in ``os.environ`` for the whole
  process (e3nn 0.4.4 needs it): :func:`_import_mace` restores the caller's value afterwards.
- run_train's ``--model MACE`` builds a ``ScaleShiftMACE`` with zero shift, so the readout must
  learn the whole atomisation energy (about -4.7 eV per atom for ethanol) before it can learn
  anything else; ``--model ScaleShiftMACE`` (used here) shifts by the mean interaction energy
  per atom of the training set and scales by the RMS force.
- ``--patience`` does not stop serial (non-distributed) training (ACEsuit/mace issue 1384):
  training runs ``max_num_epochs``, and keeps the checkpoint with the lowest validation loss.
- the validation split is made here (``valid.xyz``), not by run_train (whose split needs at
  least two configurations and is not reported back): :attr:`MACEModel.valid_indices_`.
- run_train takes one-atom frames with ``config_type=IsolatedAtom`` out of the training data and
  uses their energies as E0s *instead of* ``--E0s`` (a KeyError when they cover only some
  elements): such frames are written without that config_type.
- a cutoff shorter than every interatomic distance trains without error and predicts NaN.
- run_train drops the last incomplete training batch of every epoch, so a ``batch_size`` larger
  than the training set would train nothing: :meth:`MACEModel.fit` caps it.
- with tiny molecules an optimiser step costs about the same for 10 or 20 configurations (0.13
  and 0.16 s for the default model on one thread), and on 2 shared cores one torch thread is
  faster than two (OpenMP threads spin while another process holds the second core).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from ase import Atoms

from loops.errors import SetupError
from loops.fitting import (
    FitPlan, FitProgram, SubprocessModel, check_elements, forget_fit, program_env,
    species_e0s,
)
from loops.mace_settings import RUN_NAME, MACESettings  # noqa: F401 (re-exported: the public names stay in loops.mace)
from loops.settings import fingerprint_fields
from oed.errors import InputError
from oed.io import atomic_write_text

if TYPE_CHECKING:
    from ase.calculators.calculator import Calculator

#: Names of the files a fit writes into its work directory.
TRAIN_FILE = "train.xyz"
VALID_FILE = "valid.xyz"
MODEL_FILE = RUN_NAME + ".model"
LOG_FILE = "mace_train.log"
#: Written after a fit succeeded (its presence says the model file is whole): what :meth:`MACEModel.load_dir` reads.
FIT_RECORD = "mace_fit.json"
#: Folders run_train writes into the work directory (removed before a new fit: run_train
#: reloads the *latest* checkpoint it finds, so a stale one would be taken for the new model).
_RUN_DIRS = ("checkpoints", "logs", "results")
#: Lines in which Python (or the OS) states why run_train stopped.
_REASON = re.compile(
    r"^\s*(?:[A-Za-z_][\w.]*\.)?[A-Za-z_]\w*(?:Error|Exception)\b(?::|$)|^\s*Killed\b|Segmentation fault"
)
#: The environment variable ``import mace`` sets for the whole process.
_WEIGHTS_ONLY_ENV = "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"
#: The config_type run_train reads E0s from (one-atom frames only).
_ISOLATED = "IsolatedAtom"
#: run_train as :mod:`loops.fitting` runs it: a Python traceback ends with the exception, so
#: the last reason in the log is the one quoted.
RUN_TRAIN = FitProgram(name="mace run_train", speaker="run_train", reasons=_REASON)


def _settings_key(settings: MACESettings) -> dict[str, Any]:
    """The settings fields that change a fit, as JSON would read them back (tuples become lists)."""
    return json.loads(json.dumps(fingerprint_fields(settings), sort_keys=True, default=repr))


@contextlib.contextmanager
def _restored_env(key: str) -> Iterator[None]:
    """Give ``os.environ[key]`` back its value (or absence) on exit."""
    before = os.environ.get(key)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = before


@contextlib.contextmanager
def _quiet_mace() -> Iterator[None]:
    """Hide third-party notices printed at every mace / e3nn import and model unpickling.

    e3nn warns that ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` is set (expected: :func:`_import_mace`),
    and torch 2.13 deprecates the ``torch.jit`` calls that e3nn and mace make at import.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD.*")
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.\w+` is deprecated.*", category=DeprecationWarning)
        yield


def _import_mace() -> dict[str, Any]:
    """Import the parts of mace-torch used here without changing our process's environment.

    ``import mace`` sets ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` (e3nn 0.4.4 loads its constants
    with a plain ``torch.load``, which torch >= 2.6 refuses in weights-only mode). Left set, it
    would turn off weights-only loading for every ``torch.load`` of this process (any checkpoint
    could then run code while unpickling), so it is restored right after the import; our own
    model files are loaded with ``weights_only=False`` on purpose (:meth:`MACEModel._torch_model`).

    Raises
    ------
    SetupError
        If mace-torch is not importable.
    """
    with _restored_env(_WEIGHTS_ONLY_ENV), _quiet_mace():
        try:
            import mace  # sets the variable, then imports e3nn
            import mace.modules  # noqa: F401  (the classes a model file unpickles to)
            from mace import data as mace_data
            from mace.modules.utils import extract_invariant
            from mace.tools import torch_geometric, utils
        except ImportError as exc:
            raise SetupError(f"mace-torch is not importable ({exc}); install it with `pip install mace-torch`") from exc
    return {"data": mace_data, "extract_invariant": extract_invariant,
            "DataLoader": torch_geometric.dataloader.DataLoader, "AtomicNumberTable": utils.AtomicNumberTable}


@contextlib.contextmanager
def _torch_state(*, threads: int | None = None, device: str = "cpu", dtype: Any = None) -> Iterator[None]:
    """Torch's intra-op threads (CPU only) and default dtype set inside the block, restored even on error.

    mace builds its graph tensors in the default dtype, which must match the model's. Small
    molecular graphs gain little from a second thread and lose a lot when another process holds
    the other core (2 shared cores: 200 ethanol configurations in 1.7 s on one thread, 6 s on two).
    """
    import torch

    threads_before, dtype_before = torch.get_num_threads(), torch.get_default_dtype()
    try:
        if threads is not None and device == "cpu":
            torch.set_num_threads(int(threads))
        if dtype is not None:
            torch.set_default_dtype(dtype)
        yield
    finally:
        torch.set_num_threads(threads_before)
        torch.set_default_dtype(dtype_before)


class MACEModel(SubprocessModel):
    """A MACE potential (Batatia et al., NeurIPS 2022, arXiv:2206.07697) trained by mace-torch.

    A :class:`loops.models.Model`. :meth:`fit` (:class:`loops.fitting.SubprocessModel`) writes
    ``train.xyz`` and ``valid.xyz`` (the split: module notes), trains with
    ``mace.cli.run_train`` in a subprocess and leaves ``mace_train.log``, ``mace.model`` and
    run_train's ``checkpoints/``, ``logs/`` and ``results/`` in the work directory (those of an
    earlier fit there are removed first). One-atom ``IsolatedAtom`` frames are trained on as
    ordinary configurations (run_train would otherwise replace ``e0s`` with their energies).
    :meth:`predict` and :meth:`descriptors` evaluate in this process (on the GPU when
    ``settings.device`` resolves to ``"cuda"``). A fitted model pickles without its torch module
    (reloaded from :attr:`model_file_` when next used), so it can be sent to worker processes
    that see the same file system. Measured accuracy and cost: :mod:`loops.models`.

    Parameters
    ----------
    settings : MACESettings or None
        Architecture and training schedule; ``None`` means ``MACESettings()``.

    Attributes
    ----------
    model_file_ : pathlib.Path
        Absolute path of the trained model (a pickled ``torch.nn.Module``, saved on the CPU).
    species_ : tuple of str
        Elements the model was trained on, by atomic number.
    e0s_ : dict of str to float
        Isolated-atom energies (eV) used in the fit.
    n_train_ : int
        Number of configurations given to :meth:`fit` (training plus validation).
    valid_indices_ : tuple of int
        Positions, in the frames given to :meth:`fit`, of the configurations held out for
        validation (empty when the training set itself was the validation set).
    log_file_ : pathlib.Path
        run_train's output (stdout and stderr).

    """

    settings_class = MACESettings
    program = RUN_TRAIN
    log_file = LOG_FILE
    fitted_file = "model_file_"
    caches = ("_model", "_model_device")  # the torch module: not pickled, reloaded from the file

    def _plan(self, train: list[Atoms], e0s: Mapping[str, float], settings: MACESettings, work: Path) -> FitPlan:
        symbols: set[str] = set()
        for clean in train:
            # run_train takes a one-atom "IsolatedAtom" frame as an E0 that overrides --E0s (and
            # fails when it covers only some elements) and removes it from the data: train it
            # as an ordinary configuration instead, so that ``e0s`` stays the one reference.
            config_type = clean.info.get("config_type")
            if config_type is None or (len(clean) == 1 and config_type == _ISOLATED):
                clean.info.pop("config_type", None)
            symbols.update(clean.get_chemical_symbols())
        e0_used = species_e0s(symbols, e0s)
        device = settings.resolved_device()

        # Validation split: at least one configuration, at most all but one; none when asked
        # for 0 or when there is a single configuration (then the training set validates).
        n = len(train)
        n_valid = 0
        if settings.valid_fraction > 0 and n >= 2:
            n_valid = min(max(1, int(round(settings.valid_fraction * n))), n - 1)
        order = np.random.default_rng(settings.seed).permutation(n)
        valid_idx = sorted(int(i) for i in order[:n_valid])
        fit_set = [train[int(i)] for i in sorted(order[n_valid:])]
        valid = [train[i] for i in valid_idx] if valid_idx else fit_set
        # run_train drops the last incomplete batch of every epoch: a batch larger than the
        # training set would mean no optimiser step at all.
        argv = settings.command(TRAIN_FILE, VALID_FILE, e0_used, device=device,
                                batch_size=min(settings.batch_size, len(fit_set)))
        # run_train sets the weights-only variable itself: ours is not passed on
        env = program_env(threads=settings.num_threads, unset=(_WEIGHTS_ONLY_ENV,), MPLBACKEND="Agg",
                          WANDB_MODE="disabled")
        return FitPlan(
            argv=argv, inputs={TRAIN_FILE: fit_set, VALID_FILE: valid}, output=MODEL_FILE, what="model",
            # run_train reloads the latest checkpoint it finds: a stale one would pass for the new model
            # and the record of an earlier fit: a model run_train leaves behind a failed fit is not it
            stale=(*_RUN_DIRS, MODEL_FILE, RUN_NAME + "_compiled.model", FIT_RECORD), env=env,
            fitted={"model_file_": work / MODEL_FILE, "species_": tuple(e0_used), "e0s_": e0_used, "n_train_": n,
                    "valid_indices_": tuple(valid_idx), "log_file_": work / LOG_FILE},
        )

    def fit(self, frames: Sequence[Atoms], *, e0s: Mapping[str, float], workdir: str | os.PathLike) -> MACEModel:
        """:meth:`loops.fitting.SubprocessModel.fit`, then ``workdir/mace_fit.json`` for :meth:`load_dir`."""
        super().fit(frames, e0s=e0s, workdir=workdir)
        record = {"settings": _settings_key(self._settings()), "species": list(self.species_),
                  "e0s": {k: float(v) for k, v in self.e0s_.items()}, "n_train": int(self.n_train_),
                  "valid_indices": [int(i) for i in self.valid_indices_]}
        try:
            atomic_write_text(Path(self.model_file_).parent / FIT_RECORD, json.dumps(record, indent=1) + "\n")
        except OSError as exc:
            forget_fit(self, private=self.caches)  # fit() leaves the model unfitted whatever it raises
            raise SetupError(f"cannot write {FIT_RECORD} beside the model: {exc}") from exc
        return self

    @classmethod
    def load_dir(cls, workdir: str | os.PathLike, settings: MACESettings | None = None) -> MACEModel:
        """The model an earlier :meth:`fit` left in ``workdir`` (a resumed campaign's round model).

        The record names the settings, not the training data: as with
        :meth:`loops.gap.GAPModel.load_dir`, the directory is trusted to hold the fit it is
        named for (a campaign's ``models/<strategy>/seed<s>/k<budget>``; committee members
        check a fingerprint of their data as well, :mod:`loops.committee`).

        Parameters
        ----------
        workdir : path
            The fit's work directory, holding ``mace.model`` and ``mace_fit.json``.
        settings : MACESettings or None
            The settings the model is wanted with; ``None`` means ``MACESettings()``.

        Raises
        ------
        InputError
            No finished fit there (``mace_fit.json`` or the model file missing, unreadable), or one
            fitted with other settings (fields that change results; the differing ones named).
        """
        work = Path(workdir).resolve()
        try:
            record = json.loads((work / FIT_RECORD).read_text())
        except (OSError, ValueError) as exc:
            raise InputError(f"no finished MACE fit in {work}: {FIT_RECORD} unreadable ({exc})") from exc
        if not isinstance(record, dict):
            raise InputError(f"{work / FIT_RECORD} is not a fit record: fit again")
        model = cls(settings)
        wanted = _settings_key(model._settings())
        if record.get("settings") != wanted:
            old = record.get("settings") or {}
            diff = sorted(k for k in set(old) | set(wanted) if old.get(k) != wanted.get(k))
            raise InputError(f"the MACE fit in {work} used other settings: {', '.join(diff)}")
        if not (work / MODEL_FILE).is_file():
            raise InputError(f"MACE model file not found: {work / MODEL_FILE}")
        try:
            species, e0s = tuple(record["species"]), {str(k): float(v) for k, v in record["e0s"].items()}
            n_train, valid = int(record["n_train"]), tuple(int(i) for i in record["valid_indices"])
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise InputError(f"{work / FIT_RECORD} is incomplete ({exc!r}): fit again") from None
        model.model_file_, model.log_file_ = work / MODEL_FILE, work / LOG_FILE
        model.species_, model.e0s_, model.n_train_, model.valid_indices_ = species, e0s, n_train, valid
        return model

    def as_calculator(self) -> Calculator:
        """The trained model as mace-torch's ASE calculator (``mace.calculators.MACECalculator``).

        A new calculator on :attr:`model_file_` each call, on the settings' device and dtype;
        its energies (eV) and forces (eV/Å) are those of :meth:`predict`.

        Raises
        ------
        NotFittedError, SetupError, InputError
            Not fitted; mace-torch missing; the model file has gone.
        """
        with self._loading() as device:
            os.environ[_WEIGHTS_ONLY_ENV] = "1"  # MACECalculator's plain torch.load of our own file
            from mace.calculators import MACECalculator

            return MACECalculator(model_paths=str(self.model_file_), device=device,
                                  default_dtype=self._settings().default_dtype)

    def feature_spec(self, forces: bool) -> None:
        """``None``: MACE has no fixed feature space before a fit; select in :meth:`descriptors`."""
        return None

    # -- evaluation ------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _loading(self) -> Iterator[str]:
        """Around loading :attr:`model_file_`: mace imported, the weights-only variable restored
        afterwards (:func:`_import_mace`); yields the device."""
        self._check_fitted()
        if not Path(self.model_file_).is_file():
            raise InputError(f"MACE model file not found: {self.model_file_}")
        _import_mace()
        device = self._settings().resolved_device()
        with _restored_env(_WEIGHTS_ONLY_ENV), _quiet_mace():
            yield device

    def _torch_model(self) -> tuple[Any, str]:
        """The trained ``torch.nn.Module`` on its device (loaded once), and that device."""
        if getattr(self, "_model", None) is None:
            import torch

            # weights_only=False: the file is a whole pickled nn.Module that this class wrote
            # (MACE saves models, not state dicts); never point model_file_ at untrusted files.
            with self._loading() as device:
                model = torch.load(self.model_file_, map_location=device, weights_only=False)
            self._model, self._model_device = model.to(device).eval().requires_grad_(False), device
        return self._model, self._model_device

    #: Head that :meth:`predict` reads out (a multi-head model, :mod:`loops.ttt`); None: the only one.
    head: str | None = None

    def _batches(self, frames: Sequence[Atoms], model: Any, device: str, cutoffs=None, head=None) -> Iterator[Any]:
        """Graph batches of copies of ``frames`` for ``head``; edges within ``cutoffs[i]`` Å (default r_max)."""
        mace = _import_mace()
        dtype = next(model.parameters()).dtype
        z_table = mace["AtomicNumberTable"]([int(z) for z in model.atomic_numbers])
        heads = getattr(model, "heads", None)
        r_max = float(model.r_max)
        with _torch_state(dtype=dtype):
            graphs = []
            for i, atoms in enumerate(frames):
                clean = Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
                config = mace["data"].config_from_atoms(clean, key_specification=mace["data"].KeySpecification())
                config.head = head or self.head or config.head
                cutoff = r_max if cutoffs is None else float(cutoffs[i])
                graphs.append(mace["data"].AtomicData.from_config(config, z_table=z_table, cutoff=cutoff, heads=heads))
        loader = mace["DataLoader"](graphs, batch_size=self._settings().predict_batch_size, shuffle=False,
                                    drop_last=False)
        for batch in loader:
            yield batch.to(device)

    def predict(self, frames: Sequence[Atoms], *, cutoffs=None) -> tuple[np.ndarray, list[np.ndarray]]:
        """Energies and forces of configurations; the caller's atoms are not touched.

        ``cutoffs``: optional graph radius per configuration (Å, in (0, r_max]): edges beyond it
        are dropped (test-time radius refinement, :mod:`loops.refine`); default r_max.

        Returns
        -------
        energies : ndarray, shape (n_frames,)
            Total energies in eV (E0s included).
        forces : list of ndarray, each (n_atoms_i, 3)
            Forces in eV/Å, ``-dE/dr`` by automatic differentiation.

        Raises
        ------
        NotFittedError, UnknownElementError, InputError
            Not fitted; an element the model was not trained on; a configuration without
            atoms, or the model file has gone.
        """
        self._check_fitted()
        frames = list(frames)
        check_elements(frames, self.species_, model="MACE", verb="trained")
        if not frames:
            return np.empty(0), []
        model, device = self._torch_model()
        if cutoffs is not None:
            cutoffs = np.asarray(cutoffs, dtype=float)
            if cutoffs.shape != (len(frames),) or not np.all((cutoffs > 0) & (cutoffs <= float(model.r_max) + 1e-9)):
                raise InputError(f"cutoffs must be one radius in (0, r_max = {float(model.r_max)}] Å per configuration")
        energies: list[np.ndarray] = []
        forces: list[np.ndarray] = []
        with _torch_state(threads=self._settings().num_threads, device=device):
            for batch in self._batches(frames, model, device, cutoffs):
                out = model(batch.to_dict(), training=False, compute_force=True, compute_stress=False)
                energies.append(out["energy"].detach().cpu().numpy().astype(float))
                f = out["forces"].detach().cpu().numpy().astype(float)
                ptr = batch.ptr.cpu().numpy()
                forces.extend(f[ptr[k]:ptr[k + 1]].copy() for k in range(len(ptr) - 1))
        return np.concatenate(energies), forces

    def descriptors(self, frames: Sequence[Atoms]) -> np.ndarray:
        """Per-structure invariant MACE descriptors: node features summed over atoms.

        The invariant (``l = 0``) channels of the node features after every interaction layer
        (``MACECalculator.get_descriptors(invariants_only=True)`` per atom), concatenated layer
        by layer and summed over each configuration's atoms: the features the energy readouts
        act on, so distances here are the model's own notion of similarity (MACE-driven
        selection; the selection space of a MACE, where GAP has :meth:`GAPModel.feature_spec`).

        Returns
        -------
        ndarray, shape (n_frames, num_interactions * num_channels)
            Dimensionless learned features. Raises as :meth:`predict`.
        """
        import torch

        self._check_fitted()
        frames = list(frames)
        check_elements(frames, self.species_, model="MACE", verb="trained")
        model, device = self._torch_model()
        mace = _import_mace()
        from e3nn import o3  # imported by mace already

        n_layers = int(model.num_interactions)
        irreps_out = o3.Irreps(str(model.products[0].linear.irreps_out))
        l_max = irreps_out.lmax
        n_inv = irreps_out.dim // (l_max + 1) ** 2
        rows: list[np.ndarray] = []
        with _torch_state(threads=self._settings().num_threads, device=device), torch.no_grad():
            for batch in self._batches(frames, model, device):
                out = model(batch.to_dict(), training=False, compute_force=False, compute_stress=False)
                inv = mace["extract_invariant"](out["node_feats"], num_layers=n_layers, num_features=n_inv,
                                                l_max=l_max)
                summed = torch.zeros(batch.num_graphs, inv.shape[1], dtype=inv.dtype, device=inv.device)
                summed.index_add_(0, batch.batch, inv)
                rows.append(summed.cpu().numpy().astype(float))
        if not rows:
            return np.empty((0, n_layers * n_inv))
        return np.concatenate(rows, axis=0)


__all__ = ["RUN_TRAIN", "MACEModel", "MACESettings"]
