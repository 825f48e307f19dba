"""On-the-fly Langevin MD from Python, labelled by *your own* ASE calculator.

Everything here is plain ASE: any calculator can be the reference (here ASE's EMT on copper
stands in for yours: replace ``reference()`` by your DFT or classical calculator), any ASE
dynamics can drive the atoms. otf-statcut adds one calculator, :class:`OTFCalculator`, which at
every step predicts with NequIP, screens the per-atom uncertainty σ against the statistical
cutoffs, and labels uncertain configurations with your calculator (retraining as it goes).

Run:  python examples/langevin_python.py        (about 10 s on 2 CPU cores)
"""

from __future__ import annotations

import numpy as np
from ase import units
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import thermalize_momenta

from otf_statcut.engine import Learner, OTFCalculator
from otf_statcut.engine.decision import Action
from otf_statcut.labelers import ASECalculatorLabeler
from otf_statcut.mlip import ModelConfig, TrainConfig

STEPS = 200


def reference():
    """Your reference method: any ASE calculator (a factory, so a failed label retries fresh)."""
    return EMT()


def main() -> None:
    atoms = bulk("Cu", "fcc", cubic=True).repeat((2, 2, 2))  # 32 atoms
    labeler = ASECalculatorLabeler(reference, name="emt", retries=1)

    # 1. A few labelled rattled copies to start from.
    rng = np.random.default_rng(0)
    start = []
    for _ in range(6):
        copy = atoms.copy()
        copy.positions += rng.normal(scale=0.08, size=copy.positions.shape)
        start.append(labeler.label(copy))

    # 2. Train the first NequIP model, fit the uncertainty head and the statistical cutoffs.
    #    n: the number of per-atom σ values the run will screen (steps x atoms) -> CDF = 1 - 1/n.
    learner = Learner.from_frames(
        start, n=STEPS * len(atoms),
        model=ModelConfig(species=("Cu",), num_features=8, num_layers=1, radial_mlp_width=16, r_max=4.0),
        train=TrainConfig(max_epochs=40, batch_size=2), retrain=TrainConfig(max_epochs=15, batch_size=2),
        head="ensemble", head_settings={"n_members": 3, "train_config": {"max_epochs": 40, "batch_size": 2}},
        val_fraction=0.34, retrain_every=5,
    )
    print(f"first model: cutoffs on σ: minimum {learner.cutoffs.minimum:.3f}, "
          f"maximum {learner.cutoffs.maximum:.3f} eV/Å")

    # 3. Attach the on-the-fly calculator to ordinary ASE dynamics.
    atoms.calc = OTFCalculator(learner, labeler)
    thermalize_momenta(atoms, temperature_K=800, rng=rng)
    dyn = Langevin(atoms, timestep=2 * units.fs, temperature_K=800, friction=0.02 / units.fs, fixcm=False,
                   rng=rng)

    counts = {a: 0 for a in Action}

    def watch():
        counts[atoms.calc.decision.action] += 1
        if dyn.nsteps % 50 == 0:
            print(f"step {dyn.nsteps:4d}  T {atoms.get_temperature():6.0f} K  max σ "
                  f"{atoms.calc.results['sigma'].max():.3f} eV/Å  labels {learner.n_labels}  "
                  f"model {learner.model_id}")

    dyn.attach(watch, interval=1)
    dyn.run(STEPS)

    print(f"decisions: {', '.join(f'{a.label} {n}' for a, n in counts.items())}; "
          f"data set {len(learner.frames)} frames, {learner.model_id + 1} models trained")


if __name__ == "__main__":
    main()
