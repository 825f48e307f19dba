"""Benchmark mode: replay labelled datasets through the paper's active-learning protocol.

* :mod:`.config`    the benchmark input (YAML) into typed settings
* :mod:`.replay`    the recording: sampling set in order (the "dynamics") and the replay labeller
* :mod:`.selection` which frames an iteration adds (pure functions, shared ``decide``)
* :mod:`.metrics`   per-iteration classification statistics and F1 sweeps
* :mod:`.protocol`  one dataset × method run, resumable
* :mod:`.runner`    every dataset × method, in turn or over MPI ranks
"""

from .config import METHODS, BenchmarkConfig, DatasetSpec, ProtocolSettings, load_benchmark_config
from .protocol import format_record, head_name, next_step, run_method, seed_frames
from .replay import ReplayLabeler, SamplingSet, load_sampling_set
from .runner import run_benchmark
from .selection import Selection, classify_frames, select_candidates, select_random

__all__ = [
    "METHODS",
    "BenchmarkConfig",
    "DatasetSpec",
    "ProtocolSettings",
    "load_benchmark_config",
    "SamplingSet",
    "ReplayLabeler",
    "load_sampling_set",
    "Selection",
    "classify_frames",
    "select_candidates",
    "select_random",
    "run_method",
    "run_benchmark",
    "next_step",
    "seed_frames",
    "head_name",
    "format_record",
]
