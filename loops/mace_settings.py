"""MACE architecture, training schedule and the ``run_train`` command line (:class:`MACESettings`).

Kept apart from :mod:`loops.mace` (the model that trains in a subprocess and predicts with
mace-torch) so that settings can be built, validated and fingerprinted without importing
torch or mace; ``loops.mace`` re-exports everything here.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from ase.data import atomic_numbers

from loops.errors import SetupError
from loops.fitting import DEFAULT_TIMEOUT_S, fmt_float, symbols_by_z
from loops.settings import (
    FINGERPRINT, Rule, boolean, check_fields, choice, int_tuple, integer, nonnegative_real, optional,
    positive_real, real_in,
)
from oed.io import REF_ENERGY, REF_FORCES

#: run_train's ``--name``: the model file is ``<RUN_NAME>.model``.
RUN_NAME = "mace"
_DEVICES = ("auto", "cpu", "cuda")
_DTYPES = ("float32", "float64")


#: What each MACESettings field must be (:func:`loops.settings.check_fields`).
_RULES: Mapping[str, Rule] = MappingProxyType({
    **{name: positive_real() for name in ("r_max", "lr", "forces_weight")},
    "energy_weight": nonnegative_real(),
    **{name: integer(minimum) for name, minimum in (
        ("num_radial_basis", 1), ("num_cutoff_basis", 1), ("num_channels", 1), ("max_L", 0), ("max_ell", 0),
        ("correlation", 1), ("num_interactions", 1), ("max_num_epochs", 1), ("batch_size", 1), ("patience", 1),
        ("seed", 0), ("predict_batch_size", 1))},
    "radial_mlp": int_tuple(1),
    "valid_fraction": real_in(0, 1),
    "ema": boolean(),
    "ema_decay": real_in(0, 1, low_open=True),
    "device": choice(_DEVICES),
    "default_dtype": choice(_DTYPES),
    "num_threads": optional(integer(1)),
    "timeout_s": optional(positive_real()),
})


@dataclass(frozen=True)
class MACESettings:
    """Architecture and training schedule of a small MACE model.

    MACE is the equivariant message-passing potential of Batatia et al. (NeurIPS 2022,
    arXiv:2206.07697). The defaults are a small model chosen by measurement on rMD17 ethanol on
    2 shared CPU cores (:mod:`loops.models` has the table and the alternatives tried): a
    100-configuration fit takes about 3 minutes and gives about 40 meV/Å; the time grows with
    the number of configurations (fixed epochs).

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
        0 (or a single configuration) validates on the training set itself.
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
        Torch/OpenMP threads of the training subprocess and of :meth:`MACEModel.predict` /
        ``descriptors`` on the CPU (for the duration of the call); ``None`` leaves torch's choice
        (all cores). One is faster for small molecules on 2 shared cores.
    predict_batch_size : int, default 64
        Configurations per forward pass in :meth:`MACEModel.predict` / ``descriptors``.
    timeout_s : float or None, default 21600 (6 h)
        Time limit of one run_train in seconds (:data:`loops.fitting.DEFAULT_TIMEOUT_S`); past
        it the training is killed and the fit fails with :class:`~loops.errors.ModelFitError`.
        ``None``: no limit. Changes no result, so run fingerprints leave it out
        (:func:`loops.settings.fingerprint_fields`).

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
    timeout_s: float | None = field(default=DEFAULT_TIMEOUT_S, metadata={FINGERPRINT: False})

    def __post_init__(self) -> None:
        if isinstance(self.radial_mlp, list):  # accept a list, keep the dataclass hashable
            object.__setattr__(self, "radial_mlp", tuple(self.radial_mlp))
        self.validate()

    def validate(self) -> None:
        """Check every field; raise :class:`~loops.errors.SetupError` naming the first bad one."""
        check_fields(self, _RULES, error=SetupError)
        if self.max_L > self.max_ell:
            raise SetupError(f"MACESettings.max_L ({self.max_L}) must not exceed max_ell ({self.max_ell})")

    def resolved_device(self) -> str:
        """``"cuda"`` or ``"cpu"``: ``"auto"`` is ``"cuda"`` when ``torch.cuda.is_available()``.

        Raises :class:`~loops.errors.SetupError` for ``device="cuda"`` without a CUDA device.
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
            Training and validation extxyz (labels under ``REF_energy`` / ``REF_forces``),
            relative to run_train's working directory.
        e0s
            Isolated-atom energy in eV per element symbol, exactly the training set's elements.
        device
            ``"cpu"`` or ``"cuda"`` (see :meth:`resolved_device`).
        batch_size
            Replaces ``self.batch_size`` (:meth:`MACEModel.fit` caps it at the training set's
            size: run_train drops incomplete batches).
        executable
            The Python interpreter; ``None``: :data:`sys.executable`.
        """
        self.validate()
        if not e0s:
            raise SetupError("no isolated-atom energies (E0s) given to MACESettings.command")
        batch = int(self.batch_size if batch_size is None else batch_size)
        if batch < 1:
            raise SetupError(f"batch_size must be >= 1, got {batch_size!r}")
        e0 = "{" + ", ".join(f"{atomic_numbers[s]}: {fmt_float(e0s[s])}" for s in symbols_by_z(e0s)) + "}"
        argv = [
            executable or sys.executable, "-m", "mace.cli.run_train", f"--name={RUN_NAME}",
            f"--seed={int(self.seed)}", "--work_dir=.", "--model_dir=.", "--log_dir=logs",
            "--checkpoints_dir=checkpoints", "--results_dir=results",
            f"--train_file={os.fspath(train_file)}", f"--valid_file={os.fspath(valid_file)}", f"--E0s={e0}",
            f"--energy_key={REF_ENERGY}", f"--forces_key={REF_FORCES}",
            "--model=ScaleShiftMACE", "--scaling=rms_forces_scaling",  # shift by the mean interaction energy
            f"--r_max={fmt_float(self.r_max)}", f"--num_radial_basis={int(self.num_radial_basis)}",
            f"--num_cutoff_basis={int(self.num_cutoff_basis)}", f"--num_channels={int(self.num_channels)}",
            f"--max_L={int(self.max_L)}", f"--max_ell={int(self.max_ell)}", f"--correlation={int(self.correlation)}",
            f"--num_interactions={int(self.num_interactions)}",
            "--radial_MLP=[" + ", ".join(str(int(w)) for w in self.radial_mlp) + "]",
            "--loss=weighted", f"--energy_weight={fmt_float(self.energy_weight)}",
            f"--forces_weight={fmt_float(self.forces_weight)}", f"--max_num_epochs={int(self.max_num_epochs)}",
            f"--patience={int(self.patience)}", f"--batch_size={batch}", f"--valid_batch_size={max(batch, 32)}",
            f"--lr={fmt_float(self.lr)}", f"--device={device}", f"--default_dtype={self.default_dtype}",
            "--error_table=PerAtomMAE", "--plot=False", "--pin_memory=False",
            "--save_cpu",  # the model file loads on a CPU-only worker too
        ]
        if self.ema:
            argv += ["--ema", f"--ema_decay={fmt_float(self.ema_decay)}"]
        return argv
