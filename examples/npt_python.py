"""On-the-fly NPT MD from Python with your own ASE calculator as labeller, logged to HDF5.

Like ``langevin_python.py``, plus: the isotropic MTK barostat (which needs the stress, so the
labels and the NequIP model carry stress), and the run written to an HDF5 run log with the same
recorder that ``otf-statcut run`` uses (trajectory, every labelled frame, models, cutoffs,
checkpoints), which ``otf-statcut export`` turns into extxyz.

Run:  python examples/npt_python.py [out.h5]     (about 10 s on 2 CPU cores)
"""

from __future__ import annotations

import sys

import numpy as np
from ase import units
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.md.nose_hoover_chain import IsotropicMTKNPT
from ase.md.velocitydistribution import Stationary, thermalize_momenta

from otf_statcut.engine import Learner, OTFCalculator
from otf_statcut.engine.observers import RunRecorder, write_events
from otf_statcut.io import RunLog, read_table
from otf_statcut.labelers import ASECalculatorLabeler
from otf_statcut.mlip import ModelConfig, TrainConfig

STEPS = 150
TIMESTEP_FS = 2.0


def main(path: str = "npt_example.h5") -> None:
    atoms = bulk("Cu", "fcc", cubic=True).repeat((2, 2, 2))
    labeler = ASECalculatorLabeler(EMT, name="emt")  # your calculator here; stress is labelled too

    rng = np.random.default_rng(1)
    start = []
    for _ in range(6):  # rattled and strained copies, so the model sees volume changes
        copy = atoms.copy()
        copy.set_cell(copy.cell * rng.uniform(0.97, 1.03), scale_atoms=True)
        copy.positions += rng.normal(scale=0.08, size=copy.positions.shape)
        start.append(labeler.label(copy))

    # Stress is in eV/Å³ (1 GPa = 0.006 eV/Å³), so its loss weight must be large to matter;
    # σ screens forces only, so the model's stress is only as good as the strained initial data.
    learner = Learner.from_frames(
        start, n=STEPS * len(atoms),
        model=ModelConfig(species=("Cu",), num_features=8, num_layers=1, radial_mlp_width=16, r_max=4.0),
        train=TrainConfig(max_epochs=40, batch_size=2, stress_weight=1000.0),
        retrain=TrainConfig(max_epochs=15, batch_size=2, stress_weight=1000.0),
        head="ensemble", head_settings={"n_members": 3, "train_config": {"max_epochs": 40, "batch_size": 2}},
        val_fraction=0.34, retrain_every=5,
    )

    atoms.calc = OTFCalculator(learner, labeler)
    thermalize_momenta(atoms, temperature_K=600, rng=rng)
    Stationary(atoms)
    dyn = IsotropicMTKNPT(atoms, timestep=TIMESTEP_FS * units.fs, temperature_K=600,
                          pressure_au=1.0 * units.GPa, tdamp=50 * units.fs, pdamp=500 * units.fs)

    log = RunLog.create(path, input_text="examples/npt_python.py", config={"example": "npt"}, overwrite=True)
    write_events(log, learner.events)  # initial frames, first model and cutoffs
    recorder = RunRecorder(log, dyn, atoms.calc, timestep_fs=TIMESTEP_FS, checkpoint_every=25, rng=rng)
    dyn.attach(recorder, interval=1)
    dyn.run(STEPS)
    log.set_status("finished")
    log.close()

    volumes = np.abs(np.linalg.det(read_table(path, "trajectory")["cell"])) / len(atoms)
    print(f"volume per atom: {volumes[0]:.3f} -> {volumes[-1]:.3f} Å³ at 1 GPa; "
          f"{learner.n_labels} labels, {learner.model_id + 1} models; log: {path}")
    print(f"export with:  otf-statcut export {path} data.extxyz --trajectory traj.extxyz")


if __name__ == "__main__":
    main(*sys.argv[1:])
