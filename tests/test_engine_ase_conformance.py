"""OTFCalculator under plain ASE use (issue 10): steps counted under any dynamics attached from
Python, each configuration labelled at most once (NPTBerendsen evaluates twice per step), every
advertised property present on every step, pickling."""

from __future__ import annotations

import dataclasses
import pickle
import threading

import numpy as np
import pytest
from ase import units
from ase.build import bulk
from ase.calculators.calculator import PropertyNotImplementedError
from ase.calculators.emt import EMT
from ase.md.langevin import Langevin
from ase.md.nptberendsen import NPTBerendsen
from ase.md.verlet import VelocityVerlet

from otf_statcut.engine import Learner, OTFCalculator
from otf_statcut.engine.calculator import SOURCE_REFERENCE
from otf_statcut.labelers import ASECalculatorLabeler
from otf_statcut.mlip import ModelConfig, TrainConfig

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def learner():
    atoms = bulk("Cu", "fcc", cubic=True).repeat((2, 2, 1))
    labeler = ASECalculatorLabeler(EMT())
    rng = np.random.default_rng(0)
    frames = []
    for _ in range(4):
        copy = atoms.copy()
        copy.positions += rng.normal(scale=0.08, size=copy.positions.shape)
        frames.append(labeler.label(copy))
    return Learner.from_frames(
        frames, n=1000, head="ensemble", head_settings={"n_members": 2, "train_config": {"max_epochs": 3}},
        model=ModelConfig(species=("Cu",), num_features=8, num_layers=1, radial_mlp_width=8, r_max=4.0),
        train=TrainConfig(max_epochs=3, batch_size=2), val_fraction=0.5, retrain_every=10_000)


class Locked(ASECalculatorLabeler):
    """A labeller holding a lock (as one holding an MPI communicator or a DFT process would)."""

    def __init__(self):
        super().__init__(EMT())
        self.lock = threading.Lock()


def uncertain_everywhere(learner):
    """Every configuration between the cutoffs: each evaluation asks for a label."""
    fresh = dataclasses.replace(learner, frames=list(learner.frames), splits=list(learner.splits), events=[])
    fresh.cutoffs = dataclasses.replace(learner.cutoffs, minimum=0.0, maximum=np.inf)
    return fresh


def start(seed=1):
    atoms = bulk("Cu", "fcc", cubic=True).repeat((2, 2, 1))
    atoms.rattle(0.05, seed=seed)
    return atoms


def labelled_steps(learner):
    return [meta["step"] for kind, *payload in learner.events if kind == "frame" for meta in [payload[1]]]


def test_steps_are_counted_under_plain_ase_dynamics(learner):
    work = uncertain_everywhere(learner)
    atoms = start()
    atoms.calc = calc = OTFCalculator(work, ASECalculatorLabeler(EMT()))
    Langevin(atoms, 1 * units.fs, temperature_K=300, friction=0.02, rng=np.random.default_rng(0)).run(4)
    assert labelled_steps(work) == [0, 1, 2, 3, 4]  # not every label at step 0
    VelocityVerlet(atoms, 1 * units.fs).run(2)  # a second dynamics continues the count
    assert labelled_steps(work) == [0, 1, 2, 3, 4, 5, 6]
    assert calc.step == 6


def test_npt_berendsen_labels_each_step_once(learner):
    work = uncertain_everywhere(learner)
    atoms = start()
    labeler = ASECalculatorLabeler(EMT())
    atoms.calc = calc = OTFCalculator(work, labeler)
    dyn = NPTBerendsen(atoms, 1 * units.fs, temperature_K=300, pressure_au=1.0 * units.GPa, taut=100 * units.fs,
                       taup=500 * units.fs, compressibility_au=1e-2 / units.GPa)
    dyn.run(5)
    steps = labelled_steps(work)
    assert steps == [0, 1, 2, 3, 4, 5]  # one label per step, though every step evaluates twice
    assert labeler.n_calls == 6 and calc.n_reused == 5  # the rescaled copy reused the last label
    assert not np.allclose(atoms.cell[:], start().cell[:])  # the barostat did act


def test_every_advertised_property_is_there_and_nothing_is_labelled_twice(learner):
    work = uncertain_everywhere(learner)
    atoms = start()
    labeler = ASECalculatorLabeler(EMT(), stress=False)  # a labeller without stress
    atoms.calc = calc = OTFCalculator(work, labeler)
    atoms.get_forces()
    assert calc.source == SOURCE_REFERENCE and labeler.n_calls == 1
    calls = calc.n_calls
    for name in calc.implemented_properties:
        value = calc.get_property(name, atoms)
        assert value is not None
    assert calc.n_calls == calls  # all present: no second evaluation
    with pytest.raises(PropertyNotImplementedError):
        atoms.get_potential_energies()  # not advertised
    calc.results = {}  # ASE forgets the results: the same configuration again
    atoms.get_forces()
    assert labeler.n_calls == 1 and len(labelled_steps(work)) == 1


def test_sigma_travels_with_the_atoms_through_ase_writes(learner, tmp_path):
    import ase.io

    atoms = start()
    atoms.calc = calc = OTFCalculator(learner, ASECalculatorLabeler(EMT()))
    atoms.get_forces()
    np.testing.assert_array_equal(atoms.arrays["sigma"], calc.results["sigma"])
    ase.io.write(tmp_path / "a.extxyz", atoms)
    back = ase.io.read(tmp_path / "a.extxyz")
    np.testing.assert_allclose(back.arrays["sigma"], calc.results["sigma"], rtol=1e-7)  # extxyz: 8 digits
    assert back.info["max_sigma"] == pytest.approx(calc.decision.max_sigma)
    ase.io.write(tmp_path / "a.traj", atoms)  # .traj keeps info (not extra per-atom arrays)
    assert ase.io.read(tmp_path / "a.traj").info["max_sigma"] == pytest.approx(calc.decision.max_sigma)


def test_the_calculator_pickles_with_a_picklable_labeller_and_says_why_not_otherwise(learner):
    atoms = start()
    atoms.calc = OTFCalculator(learner, ASECalculatorLabeler(EMT()))
    forces = atoms.get_forces()
    back = pickle.loads(pickle.dumps(atoms))
    moved = back.copy()
    moved.calc = back.calc
    np.testing.assert_allclose(moved.get_forces(), forces, atol=1e-10)
    from otf_statcut.mlip.graphs import GRAPH_CACHE

    assert back.calc.learner.potential.converter.cache is GRAPH_CACHE  # not a pickled copy of it
    atoms.calc = OTFCalculator(learner, Locked())
    with pytest.raises(TypeError, match=r"OTFCalculator cannot be pickled: its EMT labeller cannot \(.*lock"):
        pickle.dumps(atoms)
