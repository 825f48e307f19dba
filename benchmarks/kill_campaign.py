"""Kill campaign: SIGKILL real ``otf-statcut run`` sessions at random moments, resume, audit.

Each round starts ``otf-statcut run input.yaml`` (the same command a user re-runs), waits a
random time (start-up, first labels and training, MD steps with labels, retrains, checkpoint
writes and flushes all get hit), and kills the process with SIGKILL (also its MPI ranks when run
under ``mpiexec``). After every kill the run file is inspected as the next session will: is it
resumable, which labelled frames are intact. After the last kill one session runs a few more
steps to the end, and the final file is audited
(:func:`otf_statcut.io.run_health.audit`: contiguous steps, every label once, models consistent
with the data set).

Counted: **unresumable** files (a kill after which the next session refuses the file),
**lost** labels (a frame intact after some kill and absent at the end), **duplicated** labels
(a configuration stored twice). Target 0 / 0 / 0.

Used by ``tests/test_engine_kill_campaign.py`` (20 kills, in CI) and run on its own for the
README's campaign::

    python benchmarks/kill_campaign.py --kills 200 --out benchmarks/results/kill_campaign.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]

#: A small Cu run with EMT labels that labels and retrains often (so kills hit every phase).
CAMPAIGN_RUN = {
    "system": {"builder": {"element": "Cu", "lattice": "fcc", "supercell": [2, 2, 1]}},
    "md": {"ensemble": "langevin", "temperature_K": 900, "timestep_fs": 2.0, "steps": 1_000_000, "friction": 0.02,
           "seed": 3},
    "initial_data": {"rattled": 4, "rattle_stdev": 0.08, "val_fraction": 0.5},
    "mlip": {"model": {"num_features": 8, "num_layers": 1, "l_max": 1, "radial_mlp_width": 8, "r_max": 4.0},
             "train": {"max_epochs": 6, "batch_size": 2, "patience": 5}, "threads": 1},
    "head": {"name": "ensemble", "settings": {"n_members": 2, "train_config": {"max_epochs": 6, "batch_size": 2}}},
    "labeler": {"name": "emt"},
    "cutoffs": {"n": 20, "max_error": float("inf")},
    "retrain": {"every": 3, "train": {"max_epochs": 3}},
    "output": {"folder": "out", "checkpoint_every": 5, "progress": False},
}


@dataclass
class CampaignResult:
    kills: int = 0
    unresumable: int = 0
    lost: int = 0
    duplicated: int = 0
    audit_problems: list = field(default_factory=list)
    labels_final: int = 0
    steps_final: int = 0
    models_final: int = 0
    sessions: int = 0
    kills_before_file: int = 0
    wall_s: float = 0.0
    notes: list = field(default_factory=list)


def _command(input_path: Path, ranks: int) -> list[str]:
    run = [sys.executable, "-m", "otf_statcut.cli", "run", str(input_path), "--no-progress"]
    if ranks > 1:
        mpiexec = Path(sys.executable).with_name("mpiexec")
        return [str(mpiexec), "-n", str(ranks), *run]
    return run


def _intact_keys(run_file: Path) -> tuple[bool, list[str], str, int]:
    """(resumable, keys of intact frames, message, checkpoint step) as the next session sees them."""
    from otf_statcut.errors import DataError
    from otf_statcut.io.runlog import RunLog

    try:
        with RunLog.open(run_file, "r") as log:
            keys = [f.info["key"] for f in log.read_frames()]
            cp = log.read_checkpoint()
            return log.health.resumable, keys, "" if log.health.resumable else log.health.message(), \
                (cp.step if cp else -1)
    except DataError as exc:
        return False, [], str(exc), -1


def campaign(folder: Path, kills: int, *, seed: int = 0, min_delay: float = 4.0, max_delay: float = 14.0,
             ranks: int = 1, log=print) -> CampaignResult:
    """Run the campaign in ``folder`` (created); returns the counts."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    data = json.loads(json.dumps(CAMPAIGN_RUN))
    data["output"]["folder"] = str(folder / "out")
    input_path = folder / "input.yaml"
    input_path.write_text(yaml.safe_dump(data))
    run_file = folder / "out" / "run.h5"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    rng = random.Random(seed)
    result = CampaignResult()
    seen: set[str] = set()
    start = time.perf_counter()
    for k in range(kills):
        proc = subprocess.Popen(_command(input_path, ranks), cwd=folder, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, start_new_session=True)
        delay = rng.uniform(min_delay, max_delay)
        try:
            proc.wait(timeout=delay)
            err = proc.stderr.read().decode(errors="replace")
            result.notes.append(f"round {k}: the session ended by itself (rc {proc.returncode}): {err[-300:]}")
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the whole session: mpiexec and every rank
            proc.wait()
        proc.stderr.close()
        result.sessions += 1
        result.kills += 1
        if not run_file.exists():
            result.kills_before_file += 1
            continue
        resumable, keys, message, step = _intact_keys(run_file)
        if not resumable:
            result.unresumable += 1
            result.notes.append(f"kill {k}: {message}")
            log(f"kill {k}: UNRESUMABLE: {message}")
            break
        seen.update(keys)
        log(f"kill {k + 1}/{kills} after {delay:.1f} s: checkpoint step {step}, {len(keys)} intact labels")
    # one more session to the end: a few steps past the last checkpoint
    _, _, _, step = _intact_keys(run_file) if run_file.exists() else (True, [], "", -1)
    final = subprocess.run(_command(input_path, ranks) + ["--steps", str(max(step, 0) + 10)], cwd=folder, env=env,
                           capture_output=True, text=True, timeout=1800)
    result.sessions += 1
    if final.returncode != 0:
        result.unresumable += 1
        result.notes.append(f"final session failed (rc {final.returncode}): {final.stderr[-500:]}")
    from otf_statcut.io.run_health import audit
    from otf_statcut.io.runlog import read_table

    result.audit_problems = audit(run_file) if final.returncode == 0 else []
    keys = list(read_table(run_file, "dataset").get("key", []))
    result.lost = len(seen - set(keys))
    result.duplicated = len(keys) - len(set(keys))
    result.labels_final = len(keys)
    result.steps_final = len(read_table(run_file, "trajectory").get("step", []))
    result.models_final = len(read_table(run_file, "models").get("model", []))
    result.wall_s = time.perf_counter() - start
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min-delay", type=float, default=4.0)
    parser.add_argument("--max-delay", type=float, default=14.0)
    parser.add_argument("--ranks", type=int, default=1, help="mpiexec -n RANKS (1: no mpiexec)")
    parser.add_argument("--folder", type=Path, default=Path("/tmp/otf-kill-campaign"))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "kill_campaign.json")
    args = parser.parse_args(argv)
    result = campaign(args.folder, args.kills, seed=args.seed, min_delay=args.min_delay, max_delay=args.max_delay,
                      ranks=args.ranks)
    record = {"settings": vars(args) | {"folder": str(args.folder), "out": str(args.out)}, **asdict(result)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"{result.kills} kills: unresumable {result.unresumable}, lost {result.lost}, duplicated "
          f"{result.duplicated}; audit: {result.audit_problems or 'consistent'}; final {result.labels_final} labels, "
          f"{result.steps_final} steps, {result.models_final} models; {result.wall_s / 60:.1f} min")
    return 0 if not (result.unresumable or result.lost or result.duplicated or result.audit_problems) else 1


if __name__ == "__main__":
    sys.exit(main())
