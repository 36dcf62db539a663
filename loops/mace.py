"""MACE interatomic potentials trained with mace-torch's own trainer.

MACE (Batatia et al., "MACE: Higher Order Equivariant Message Passing Neural Networks for Fast
and Accurate Force Fields", NeurIPS 2022, arXiv:2206.07697) writes the energy of a
configuration as a sum of atomic energies read out from equivariant node features; each of its
message-passing layers builds many-body messages (body order ``correlation + 1``) from
spherical-harmonic edge features. Forces are minus the gradient of the energy.

:class:`MACESettings` holds a small architecture and training schedule (CPU training in minutes);
:class:`MACEModel` writes ``train.xyz`` / ``valid.xyz`` into a work directory, runs
``python -m mace.cli.run_train`` there in a subprocess and predicts energies (eV), forces (eV/Å)
and per-structure invariant descriptors in batches, in this process.

Notes on mace-torch (seen here, mace-torch 0.3.16, e3nn 0.4.4, torch 2.13):

- ``import mace`` sets ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` in ``os.environ``: e3nn 0.4.4
  reads its constants with a plain ``torch.load`` that torch >= 2.6 refuses otherwise. Left
  alone, this would silently make every later ``torch.load`` in our process unpickle arbitrary
  objects. :func:`_import_mace` imports what we need with the variable set and then restores
  the caller's value; the model file (a pickled ``torch.nn.Module`` that we wrote ourselves) is
  loaded with an explicit ``weights_only=False``.
- run_train's ``--model MACE`` builds a ``ScaleShiftMACE`` with zero shift, so the readout must
  learn the whole atomisation energy (about -4.7 eV per atom for ethanol) before it can learn
  anything else; ``--model ScaleShiftMACE`` (used here) shifts by the mean interaction energy
  per atom of the training set and scales by the RMS force.
- ``--patience`` does not stop serial (non-distributed) training: the loop only breaks on the
  distributed signal (ACEsuit/mace issue 1384). Training always runs ``max_num_epochs``; the
  model kept is still the checkpoint with the lowest validation loss.
- the validation split is made here (``valid.xyz``), not by run_train (whose split needs at
  least two configurations and is not reported back), so :attr:`MACEModel.valid_indices_`
  names the configurations that were held out.
- run_train takes one-atom frames with ``config_type=IsolatedAtom`` out of the training data and
  uses their energies as E0s *instead of* ``--E0s`` (a KeyError when they cover only some
  elements); :meth:`MACEModel.fit` writes such frames without that config_type, so they are
  trained on like any configuration and the ``e0s`` argument is what the model uses.
- a cutoff shorter than every interatomic distance trains without error and predicts NaN.
- run_train drops the last incomplete training batch of every epoch, so a ``batch_size`` larger
  than the training set would train nothing: :meth:`MACEModel.fit` caps it.
- run_train always TorchScript-compiles a copy of the model after training (a few seconds,
  ``mace_compiled.model``; unused here).
- with tiny molecules an optimiser step costs about the same for 10 or 20 configurations
  (measured: 0.13 and 0.16 s for the default model on one thread), and on 2 shared cores one torch thread is faster than two (OpenMP threads spin while
  another process holds the second core): see :class:`MACESettings`.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms
from ase.data import atomic_numbers

from loops.errors import ModelFitError, SetupError
from loops.models import species_e0s, training_frame
from oed.errors import InputError, NotFittedError, UnknownElementError
from oed.io import REF_ENERGY, REF_FORCES

#: Names of the files a fit writes into its work directory.
TRAIN_FILE = "train.xyz"
VALID_FILE = "valid.xyz"
RUN_NAME = "mace"
MODEL_FILE = RUN_NAME + ".model"
LOG_FILE = "mace_train.log"
#: Folders run_train writes into the work directory (removed before a new fit: run_train
#: reloads the *latest* checkpoint it finds, so a stale one would be taken for the new model).
_RUN_DIRS = ("checkpoints", "logs", "results")
#: Lines of the training log quoted in a ModelFitError.
_LOG_TAIL_LINES = 20
#: Lines in which Python (or the OS) states why run_train stopped.
_REASON = re.compile(
    r"^\s*(?:[A-Za-z_][\w.]*\.)?[A-Za-z_]\w*(?:Error|Exception)\b(?::|$)|^\s*Killed\b|Segmentation fault"
)
#: The environment variable ``import mace`` sets for the whole process.
_WEIGHTS_ONLY_ENV = "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"
#: The config_type run_train reads E0s from (one-atom frames only).
_ISOLATED = "IsolatedAtom"
_DEVICES = ("auto", "cpu", "cuda")
_DTYPES = ("float32", "float64")


def _is_int(x: Any) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def _is_real(x: Any) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, (bool, np.bool_))


def _fmt(x: float) -> str:
    """A float without losing precision (``repr``)."""
    return repr(float(x))


def _symbols_by_z(species) -> list[str]:
    return sorted(set(species), key=atomic_numbers.__getitem__)


@dataclass(frozen=True)
class MACESettings:
    """Architecture and training schedule of a small MACE model.

    MACE is the equivariant message-passing potential of Batatia et al. (NeurIPS 2022,
    arXiv:2206.07697). The defaults are a small model chosen by measurement on rMD17 ethanol on
    2 shared CPU cores (table in :class:`MACEModel`): a 100-configuration fit takes about
    3 minutes and gives about 40 meV/Å. At 100 configurations and about the same time,
    16 channels with ``max_ell`` 3 beat 32 channels (fewer epochs fit in the time: 53–63
    meV/Å), ``max_ell`` 2 (45–49 meV/Å) and ``correlation`` 2 (59 meV/Å); a larger
    ``energy_weight`` (10) did not lower the energy error. The time grows with the number of
    configurations (fixed epochs): about 6 minutes at 200.

    Parameters
    ----------
    r_max : float, default 5.0
        Cutoff radius in Å.
    num_radial_basis : int, default 8
        Bessel radial basis functions.
    num_cutoff_basis : int, default 5
        Order of the polynomial envelope that switches the radial basis off at ``r_max``.
    num_channels : int, default 16
        Channels of the hidden node features (``hidden_irreps = "{num_channels}x0e"`` for
        ``max_L = 0``, ``+ "{num_channels}x1o"`` for ``max_L = 1``, ...).
    max_L : int, default 0
        Highest angular momentum of the hidden node features (0: invariant messages).
    max_ell : int, default 3
        Highest angular momentum of the spherical harmonics of the edges.
    correlation : int, default 3
        Correlation order of each layer's product basis (body order ``correlation + 1``).
    num_interactions : int, default 2
        Message-passing layers (receptive field ``num_interactions * r_max``).
    radial_mlp : tuple of int, default (64, 64, 64)
        Hidden widths of the MLP that maps the radial basis to the edge weights.
    max_num_epochs : int, default 150
        Training epochs. All of them run: mace-torch 0.3.16 ignores ``patience`` in serial
        training (ACEsuit/mace issue 1384); the model kept is the epoch with the lowest
        validation loss.
    batch_size : int, default 10
        Configurations per optimiser step.
    lr : float, default 0.01
        Adam learning rate.
    energy_weight : float, default 1.0
        Weight of the per-atom energy term (eV²/atom²) of the loss.
    forces_weight : float, default 100.0
        Weight of the force term (eV²/Å²) of the loss.
    valid_fraction : float, default 0.1
        Fraction of the configurations held out for validation (checkpoint choice and the
        learning-rate schedule), at least one and at most all but one; chosen with ``seed``.
        0 validates on the training set itself (no configuration held out), as does a fit on
        a single configuration.
    patience : int, default 50
        Epochs without improvement of the validation loss before training stops (passed to
        run_train; see ``max_num_epochs``).
    ema : bool, default True
        Evaluate and keep an exponential moving average of the weights.
    ema_decay : float, default 0.99
        Decay of that average, in (0, 1).
    seed : int, default 0
        Seed of the validation split and of run_train (weights, batch order). Same data,
        settings and seed give the same model on the same device and thread count.
    device : {"auto", "cpu", "cuda"}, default "auto"
        Where to train and predict; ``"auto"`` is ``"cuda"`` when ``torch.cuda.is_available()``.
    default_dtype : {"float64", "float32"}, default "float64"
        Floating-point precision of the model.
    num_threads : int or None, default 1
        Torch/OpenMP threads of the training subprocess (``OMP_NUM_THREADS``,
        ``MKL_NUM_THREADS``) and of :meth:`MACEModel.predict` / ``descriptors`` on the CPU
        (set for the duration of the call, then restored); ``None`` leaves torch's choice (all
        cores). One is faster for small molecules on a shared 2-core machine and lets fits run
        side by side.
    predict_batch_size : int, default 64
        Configurations per forward pass in :meth:`MACEModel.predict` / ``descriptors``.

    Raises
    ------
    SetupError
        On construction, for a field of the wrong type or out of range (the field is named).
    """

    r_max: float = 5.0
    num_radial_basis: int = 8
    num_cutoff_basis: int = 5
    num_channels: int = 16
    max_L: int = 0
    max_ell: int = 3
    correlation: int = 3
    num_interactions: int = 2
    radial_mlp: tuple[int, ...] = (64, 64, 64)
    max_num_epochs: int = 150
    batch_size: int = 10
    lr: float = 0.01
    energy_weight: float = 1.0
    forces_weight: float = 100.0
    valid_fraction: float = 0.1
    patience: int = 50
    ema: bool = True
    ema_decay: float = 0.99
    seed: int = 0
    device: str = "auto"
    default_dtype: str = "float64"
    num_threads: int | None = 1
    predict_batch_size: int = 64

    def __post_init__(self) -> None:
        if isinstance(self.radial_mlp, list):  # accept a list, keep the dataclass hashable
            object.__setattr__(self, "radial_mlp", tuple(self.radial_mlp))
        self.validate()

    def validate(self) -> None:
        """Check every field; raise :class:`~loops.errors.SetupError` naming the first bad one."""
        for name in ("r_max", "lr", "forces_weight"):
            value = getattr(self, name)
            if not _is_real(value) or not math.isfinite(value) or value <= 0:
                raise SetupError(f"MACESettings.{name} must be a positive finite number, got {value!r}")
        ew = self.energy_weight
        if not _is_real(ew) or not math.isfinite(ew) or ew < 0:
            raise SetupError(
                f"MACESettings.energy_weight must be a finite number >= 0, got {self.energy_weight!r}"
            )
        for name, minimum in (
            ("num_radial_basis", 1), ("num_cutoff_basis", 1), ("num_channels", 1), ("max_L", 0),
            ("max_ell", 0), ("correlation", 1), ("num_interactions", 1), ("max_num_epochs", 1),
            ("batch_size", 1), ("patience", 1), ("seed", 0), ("predict_batch_size", 1),
        ):
            value = getattr(self, name)
            if not _is_int(value) or value < minimum:
                raise SetupError(f"MACESettings.{name} must be an integer >= {minimum}, got {value!r}")
        if self.max_L > self.max_ell:
            raise SetupError(
                f"MACESettings.max_L ({self.max_L}) must not exceed max_ell ({self.max_ell})"
            )
        if (
            not isinstance(self.radial_mlp, tuple)
            or not self.radial_mlp
            or not all(_is_int(w) and w >= 1 for w in self.radial_mlp)
        ):
            raise SetupError(
                f"MACESettings.radial_mlp must be a non-empty tuple of integers >= 1, got {self.radial_mlp!r}"
            )
        v = self.valid_fraction
        if not _is_real(v) or not math.isfinite(v) or not 0 <= v < 1:
            raise SetupError(f"MACESettings.valid_fraction must be in [0, 1), got {v!r}")
        if not isinstance(self.ema, (bool, np.bool_)):
            raise SetupError(f"MACESettings.ema must be True or False, got {self.ema!r}")
        d = self.ema_decay
        if not _is_real(d) or not 0 < d < 1:
            raise SetupError(f"MACESettings.ema_decay must be in (0, 1), got {d!r}")
        if self.device not in _DEVICES:
            raise SetupError(f"MACESettings.device must be one of {', '.join(_DEVICES)}, got {self.device!r}")
        if self.default_dtype not in _DTYPES:
            raise SetupError(
                f"MACESettings.default_dtype must be one of {', '.join(_DTYPES)}, got {self.default_dtype!r}"
            )
        if self.num_threads is not None and (not _is_int(self.num_threads) or self.num_threads < 1):
            raise SetupError(
                f"MACESettings.num_threads must be None or an integer >= 1, got {self.num_threads!r}"
            )

    def resolved_device(self) -> str:
        """``"cuda"`` or ``"cpu"``: ``device`` with ``"auto"`` decided by ``torch.cuda.is_available()``.

        Raises
        ------
        SetupError
            ``device="cuda"`` on a machine without a usable CUDA device.
        """
        import torch

        if self.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        if self.device == "cuda" and not torch.cuda.is_available():
            raise SetupError("MACESettings.device is 'cuda' but torch sees no CUDA device")
        return self.device

    def command(
        self,
        train_file: str | os.PathLike,
        valid_file: str | os.PathLike,
        e0s: Mapping[str, float],
        *,
        device: str,
        batch_size: int | None = None,
        executable: str | None = None,
    ) -> list[str]:
        """The ``python -m mace.cli.run_train`` argv for a work directory.

        Parameters
        ----------
        train_file, valid_file
            Training and validation extxyz (labels under ``REF_energy`` / ``REF_forces``), as
            run_train sees them from its working directory.
        e0s
            Isolated-atom energy in eV per element symbol, exactly the elements of the
            training set (run_train builds its element table from the data).
        device
            ``"cpu"`` or ``"cuda"`` (see :meth:`resolved_device`).
        batch_size
            Replaces ``self.batch_size`` (:meth:`MACEModel.fit` caps it at the number of
            training configurations: run_train drops incomplete batches).
        executable
            The Python interpreter; ``None``: :data:`sys.executable`.

        Returns
        -------
        list of str, ready for :func:`subprocess.run` with ``cwd`` the work directory.
        """
        self.validate()
        if not e0s:
            raise SetupError("no isolated-atom energies (E0s) given to MACESettings.command")
        for s in e0s:
            if s not in atomic_numbers or s == "X":
                raise SetupError(f"unknown chemical symbol {s!r} in E0s")
        batch = int(self.batch_size if batch_size is None else batch_size)
        if batch < 1:
            raise SetupError(f"batch_size must be >= 1, got {batch_size!r}")
        e0 = "{" + ", ".join(
            f"{atomic_numbers[s]}: {_fmt(e0s[s])}" for s in _symbols_by_z(e0s)
        ) + "}"
        argv = [
            executable or sys.executable, "-m", "mace.cli.run_train",
            f"--name={RUN_NAME}",
            f"--seed={int(self.seed)}",
            "--work_dir=.",
            "--model_dir=.",
            "--log_dir=logs",
            "--checkpoints_dir=checkpoints",
            "--results_dir=results",
            f"--train_file={os.fspath(train_file)}",
            f"--valid_file={os.fspath(valid_file)}",
            f"--E0s={e0}",
            f"--energy_key={REF_ENERGY}",
            f"--forces_key={REF_FORCES}",
            "--model=ScaleShiftMACE",  # shift by the mean interaction energy (module notes)
            "--scaling=rms_forces_scaling",
            f"--r_max={_fmt(self.r_max)}",
            f"--num_radial_basis={int(self.num_radial_basis)}",
            f"--num_cutoff_basis={int(self.num_cutoff_basis)}",
            f"--num_channels={int(self.num_channels)}",
            f"--max_L={int(self.max_L)}",
            f"--max_ell={int(self.max_ell)}",
            f"--correlation={int(self.correlation)}",
            f"--num_interactions={int(self.num_interactions)}",
            "--radial_MLP=[" + ", ".join(str(int(w)) for w in self.radial_mlp) + "]",
            "--loss=weighted",
            f"--energy_weight={_fmt(self.energy_weight)}",
            f"--forces_weight={_fmt(self.forces_weight)}",
            f"--max_num_epochs={int(self.max_num_epochs)}",
            f"--patience={int(self.patience)}",
            f"--batch_size={batch}",
            f"--valid_batch_size={max(batch, 32)}",
            f"--lr={_fmt(self.lr)}",
            f"--device={device}",
            f"--default_dtype={self.default_dtype}",
            "--error_table=PerAtomMAE",
            "--plot=False",
            "--pin_memory=False",
            "--save_cpu",  # the model file loads on a CPU-only worker too
        ]
        if self.ema:
            argv += ["--ema", f"--ema_decay={_fmt(self.ema_decay)}"]
        return argv


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
    """Hide notices that importing mace / e3nn and unpickling a model print every time.

    e3nn warns that ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` is set (expected: see
    :func:`_import_mace`), and torch 2.13 deprecates the ``torch.jit`` calls that e3nn and mace
    make at import: third-party notices the user can do nothing about.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD.*")
        warnings.filterwarnings(
            "ignore", message=r".*torch\.jit\.\w+` is deprecated.*", category=DeprecationWarning
        )
        yield


def _import_mace() -> dict[str, Any]:
    """Import the parts of mace-torch used here without changing our process's environment.

    ``import mace`` (and ``mace.calculators``) sets ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` in
    ``os.environ``: e3nn 0.4.4 loads its constants with a plain ``torch.load``, which torch >= 2.6
    refuses in its default weights-only mode. The variable must be set while e3nn is imported,
    but left set it would turn off weights-only loading for every ``torch.load`` of this process
    (any checkpoint, from anywhere, could then run code while unpickling). So it is restored
    right after the import; our own model files are loaded with ``weights_only=False`` on
    purpose (:meth:`MACEModel._torch_model`).

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
            raise SetupError(
                f"mace-torch is not importable ({exc}); install it with `pip install mace-torch`"
            ) from exc
    return {
        "data": mace_data,
        "extract_invariant": extract_invariant,
        "DataLoader": torch_geometric.dataloader.DataLoader,
        "AtomicNumberTable": utils.AtomicNumberTable,
    }


@contextlib.contextmanager
def _torch_threads(n: int | None, device: str) -> Iterator[None]:
    """Torch's intra-op thread count set to ``n`` inside the block (CPU only), then restored.

    Small molecular graphs gain little from a second thread and lose a lot when another
    process holds the other core (measured here on 2 shared cores: 200 ethanol configurations
    took 1.7 s with one thread and 6 s with two).
    """
    import torch

    if n is None or device != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def _default_dtype(dtype) -> Iterator[None]:
    """Torch's default dtype set to ``dtype`` inside the block, restored even on error.

    mace builds its graph tensors in the default dtype, which must match the model's.
    """
    import torch

    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


class MACEModel:
    """A MACE potential (Batatia et al., NeurIPS 2022, arXiv:2206.07697) trained by mace-torch.

    ``__init__`` only stores the settings; :meth:`fit` trains with ``mace.cli.run_train`` in a
    subprocess, :meth:`predict` and :meth:`descriptors` evaluate in this process (on the GPU
    when ``settings.device`` resolves to ``"cuda"``). A fitted model pickles without its torch
    module (reloaded from :attr:`model_file_` when next used), so it can be sent to worker
    processes that see the same file system.

    Measured with the default settings on 2 shared CPU cores (1 torch thread), force and energy
    MAE on 200 random rMD17-ethanol configurations of ``test_MD.xyz``, random training sets
    from ``train.xyz``:

    =======  ========  ===============  ===================
    n_train  fit time  force MAE meV/Å  energy MAE meV/atom
    =======  ========  ===============  ===================
    25       50 s      88.5             4.26
    100      169 s     39.7             1.32
    200      370 s     28.9             1.31
    =======  ========  ===============  ===================

    (One seed each; other jobs shared the cores, so times vary by about ±30 %. The published
    MACE reached 32.6 meV/Å with 50 configurations: a larger model trained far longer. The
    GAP defaults of :mod:`loops.gap` give 78 meV/Å at 100.) Prediction of the 200
    configurations takes about 4 s.

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

    Examples
    --------
    >>> model = MACEModel(MACESettings(max_num_epochs=50))  # doctest: +SKIP
    >>> model.fit(frames, e0s=e0s, workdir="fit")  # doctest: +SKIP
    >>> energies, forces = model.predict(test_frames)  # doctest: +SKIP
    >>> features = model.descriptors(pool)  # doctest: +SKIP
    """

    #: The settings dataclass (see :mod:`loops.models`).
    settings_class = MACESettings

    def __init__(self, settings: MACESettings | None = None) -> None:
        self.settings = settings

    # -- pickling: the torch module stays behind ----------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("_model", None)
        state.pop("_model_device", None)
        return state

    def _settings(self) -> MACESettings:
        return self.settings if self.settings is not None else MACESettings()

    def _check_fitted(self) -> None:
        if not hasattr(self, "model_file_"):
            raise NotFittedError("this MACEModel is not fitted yet: call fit() first")

    def fit(
        self,
        frames: Sequence[Atoms],
        *,
        e0s: Mapping[str, float],
        workdir: str | os.PathLike,
    ) -> MACEModel:
        """Train the model with mace-torch's ``run_train`` in a subprocess.

        Parameters
        ----------
        frames : sequence of ase.Atoms
            Training configurations, each with a reference energy (eV) and forces (eV/Å) under
            ``REF_energy`` / ``REF_forces`` or plain ``energy`` / ``forces``. ``config_type`` is
            kept, except on one-atom ``IsolatedAtom`` frames, which are trained on as ordinary
            configurations (run_train would otherwise replace ``e0s`` with their energies).
        e0s : mapping of str to float
            Isolated-atom energy in eV for every element of ``frames`` (others are ignored).
        workdir : path
            Directory (created if needed) receiving ``train.xyz``, ``valid.xyz``,
            ``mace_train.log``, ``mace.model`` and run_train's ``checkpoints/``, ``logs/`` and
            ``results/``; those of an earlier fit there are removed first.

        Returns
        -------
        self

        Raises
        ------
        InputError
            No frames, or a frame without atoms or without a finite reference energy and
            forces of shape ``(n_atoms, 3)`` (its index is named).
        SetupError
            Bad settings, an element without a finite E0, ``device="cuda"`` without CUDA, or
            mace-torch not installed.
        ModelFitError
            run_train exited non-zero or wrote no model (the reason it printed, the log's last
            lines and the log's path are quoted); the model is then unfitted.
        """
        settings = self._settings()
        settings.validate()
        frames = list(frames)
        if not frames:
            raise InputError("no training configurations given to MACEModel.fit")
        clean_frames: list[Atoms] = []
        symbols: set[str] = set()
        for i, atoms in enumerate(frames):
            clean = training_frame(i, atoms)
            config_type = atoms.info.get("config_type")
            # run_train takes a one-atom "IsolatedAtom" frame as an E0 that overrides --E0s (and
            # fails when it covers only some elements) and removes it from the data: train it
            # as an ordinary configuration instead, so that ``e0s`` stays the one reference.
            if config_type is not None and not (len(atoms) == 1 and config_type == _ISOLATED):
                clean.info["config_type"] = config_type
            clean_frames.append(clean)
            symbols.update(atoms.get_chemical_symbols())
        e0_used = species_e0s(symbols, e0s)
        species = list(e0_used)
        device = settings.resolved_device()

        # Validation split: at least one configuration, at most all but one; none when asked
        # for 0 or when there is a single configuration (then the training set validates).
        n = len(clean_frames)
        n_valid = 0
        if settings.valid_fraction > 0 and n >= 2:
            n_valid = min(max(1, int(round(settings.valid_fraction * n))), n - 1)
        order = np.random.default_rng(settings.seed).permutation(n)
        valid_idx = sorted(int(i) for i in order[:n_valid])
        train_idx = sorted(int(i) for i in order[n_valid:])
        train = [clean_frames[i] for i in train_idx]
        valid = [clean_frames[i] for i in valid_idx] if valid_idx else train
        # run_train drops the last incomplete batch of every epoch: a batch larger than the
        # training set would mean no optimiser step at all.
        argv = settings.command(
            TRAIN_FILE, VALID_FILE, e0_used, device=device, batch_size=min(settings.batch_size, len(train))
        )

        work = Path(workdir).resolve()
        work.mkdir(parents=True, exist_ok=True)
        for name in ("_model", "_model_device", "model_file_", "species_", "e0s_", "n_train_",
                     "valid_indices_", "log_file_"):
            self.__dict__.pop(name, None)  # a failed refit leaves an unfitted model, not a stale one
        for name in _RUN_DIRS:
            path = work / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
        for name in (MODEL_FILE, RUN_NAME + "_compiled.model"):
            (work / name).unlink(missing_ok=True)
        _write_extxyz_atomic(work / TRAIN_FILE, train)
        _write_extxyz_atomic(work / VALID_FILE, valid)

        env = os.environ.copy()
        env.pop(_WEIGHTS_ONLY_ENV, None)  # run_train sets it itself; do not pass ours on
        env["MPLBACKEND"] = "Agg"
        env["WANDB_MODE"] = "disabled"
        if settings.num_threads is not None:
            for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
                env[key] = str(int(settings.num_threads))
        log_path = work / LOG_FILE
        with open(log_path, "w") as log:
            try:
                proc = subprocess.run(
                    argv, cwd=work, stdout=log, stderr=subprocess.STDOUT, env=env, check=False
                )
            except OSError as exc:
                raise SetupError(f"cannot run {argv[0]}: {exc}") from exc
        model_file = work / MODEL_FILE
        if proc.returncode != 0 or not model_file.is_file():
            why = (
                f"mace run_train exited with status {proc.returncode}"
                if proc.returncode != 0
                else "mace run_train exited 0 but wrote no model"
            )
            raise ModelFitError(f"{why} (work directory {work}).\n{_log_report(log_path)}")

        self._model = None
        self.model_file_ = model_file
        self.species_ = tuple(species)
        self.e0s_ = e0_used
        self.n_train_ = n
        self.valid_indices_ = tuple(valid_idx)
        self.log_file_ = log_path
        return self

    # -- evaluation ------------------------------------------------------------------------------
    def _torch_model(self) -> tuple[Any, str]:
        """The trained ``torch.nn.Module`` on its device (loaded once), and that device."""
        self._check_fitted()
        model = getattr(self, "_model", None)
        if model is None:
            import torch

            _import_mace()
            device = self._settings().resolved_device()
            if not Path(self.model_file_).is_file():
                raise InputError(f"MACE model file not found: {self.model_file_}")
            # weights_only=False: the file is a whole pickled nn.Module that this class wrote
            # (MACE saves models, not state dicts); never point model_file_ at untrusted files.
            with _restored_env(_WEIGHTS_ONLY_ENV), _quiet_mace():
                model = torch.load(self.model_file_, map_location=device, weights_only=False)
            model = model.to(device).eval()
            for p in model.parameters():
                p.requires_grad_(False)
            self._model = model
            self._model_device = device
        return model, self._model_device

    def _check_elements(self, frames: Sequence[Atoms]) -> None:
        known = set(self.species_)
        for i, atoms in enumerate(frames):
            if len(atoms) == 0:
                raise InputError(f"configuration {i} has no atoms")
            unknown = sorted(set(atoms.get_chemical_symbols()) - known, key=atomic_numbers.__getitem__)
            if unknown:
                raise UnknownElementError(
                    f"configuration {i} holds element(s) {', '.join(unknown)} that the MACE model "
                    f"was not trained on (trained on {', '.join(self.species_)})"
                )

    def _batches(self, frames: Sequence[Atoms], model: Any, device: str) -> Iterator[Any]:
        """mace graph batches of ``frames`` (copies: positions, numbers, cell, pbc only)."""
        mace = _import_mace()
        dtype = next(model.parameters()).dtype
        z_table = mace["AtomicNumberTable"]([int(z) for z in model.atomic_numbers])
        heads = getattr(model, "heads", None)
        r_max = float(model.r_max)
        with _default_dtype(dtype):
            graphs = []
            for atoms in frames:
                clean = Atoms(
                    numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc
                )
                config = mace["data"].config_from_atoms(
                    clean, key_specification=mace["data"].KeySpecification()
                )
                graphs.append(
                    mace["data"].AtomicData.from_config(config, z_table=z_table, cutoff=r_max, heads=heads)
                )
        loader = mace["DataLoader"](
            graphs, batch_size=self._settings().predict_batch_size, shuffle=False, drop_last=False
        )
        for batch in loader:
            yield batch.to(device)

    def predict(self, frames: Sequence[Atoms]) -> tuple[np.ndarray, list[np.ndarray]]:
        """Energies and forces of configurations; the caller's atoms are not touched.

        Parameters
        ----------
        frames : sequence of ase.Atoms

        Returns
        -------
        energies : ndarray, shape (n_frames,)
            Total energies in eV (E0s included).
        forces : list of ndarray, each (n_atoms_i, 3)
            Forces in eV/Å, ``-dE/dr`` by automatic differentiation.

        Raises
        ------
        NotFittedError
            If the model is not fitted.
        UnknownElementError
            If a configuration holds an element the model was not trained on.
        InputError
            A configuration without atoms, or the model file has gone.
        """
        self._check_fitted()
        frames = list(frames)
        self._check_elements(frames)
        if not frames:
            return np.empty(0), []
        model, device = self._torch_model()
        energies: list[np.ndarray] = []
        forces: list[np.ndarray] = []
        with _torch_threads(self._settings().num_threads, device):
            for batch in self._batches(frames, model, device):
                out = model(batch.to_dict(), training=False, compute_force=True, compute_stress=False)
                energies.append(out["energy"].detach().cpu().numpy().astype(float))
                f = out["forces"].detach().cpu().numpy().astype(float)
                ptr = batch.ptr.cpu().numpy()
                forces.extend(f[ptr[k]:ptr[k + 1]].copy() for k in range(len(ptr) - 1))
        return np.concatenate(energies), forces

    def descriptors(self, frames: Sequence[Atoms]) -> np.ndarray:
        """Per-structure invariant MACE descriptors: node features summed over atoms.

        The invariant (``l = 0``) channels of the node features after every interaction layer
        of the trained model (what ``MACECalculator.get_descriptors(invariants_only=True)``
        returns per atom), concatenated layer by layer and summed over the atoms of each
        configuration. They are the features the model's energy readouts act on, so distances
        in this space are the model's own notion of similarity (MACE-driven selection).

        Parameters
        ----------
        frames : sequence of ase.Atoms

        Returns
        -------
        ndarray, shape (n_frames, d)
            ``d = num_interactions * num_channels`` (dimensionless learned features).

        Raises
        ------
        NotFittedError, UnknownElementError, InputError
            As :meth:`predict`.
        """
        import torch

        self._check_fitted()
        frames = list(frames)
        self._check_elements(frames)
        model, device = self._torch_model()
        mace = _import_mace()
        from e3nn import o3  # imported by mace already

        n_layers = int(model.num_interactions)
        irreps_out = o3.Irreps(str(model.products[0].linear.irreps_out))
        l_max = irreps_out.lmax
        n_inv = irreps_out.dim // (l_max + 1) ** 2
        rows: list[np.ndarray] = []
        with _torch_threads(self._settings().num_threads, device), torch.no_grad():
            for batch in self._batches(frames, model, device):
                out = model(batch.to_dict(), training=False, compute_force=False, compute_stress=False)
                inv = mace["extract_invariant"](
                    out["node_feats"], num_layers=n_layers, num_features=n_inv, l_max=l_max
                )
                summed = torch.zeros(batch.num_graphs, inv.shape[1], dtype=inv.dtype, device=inv.device)
                summed.index_add_(0, batch.batch, inv)
                rows.append(summed.cpu().numpy().astype(float))
        if not rows:
            return np.empty((0, n_layers * n_inv))
        return np.concatenate(rows, axis=0)


def _write_extxyz_atomic(path: Path, frames: Sequence[Atoms]) -> None:
    """Write extxyz to a temporary file beside ``path``, then move it into place."""
    from ase.io import write  # lazy: ase.io pulls many format modules

    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            write(fh, list(frames), format="extxyz")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _log_report(log_path: Path, n: int = _LOG_TAIL_LINES) -> str:
    """run_train's reason for stopping (the exception line) and the last ``n`` lines of its log."""
    try:
        lines = log_path.read_text(errors="replace").splitlines()
    except OSError:
        return f"(no log at {log_path})"
    reasons = [ln.strip() for ln in lines if _REASON.search(ln)]
    tail = [ln for ln in lines if ln.strip()][-n:]
    text = f"Last {len(tail)} lines of {log_path}:\n" + "\n".join(tail)
    if reasons:
        return "run_train says: " + reasons[-1] + "\n" + text
    return text


__all__ = ["MACEModel", "MACESettings"]
