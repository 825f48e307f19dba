"""otf-statcut: on-the-fly active learning of NequIP potentials with statistical cutoffs.

Units throughout: energies in eV, lengths in Å, forces in eV/Å, stress in eV/Å³, time in fs,
temperature in K.
"""

__version__ = "0.1.0"
