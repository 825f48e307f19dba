"""Issue 10: 20 SIGKILLs of real ``otf-statcut run`` sessions at random moments (start-up,
labelling, training, checkpoint writes, flushes), each followed by a resume; at the end no file
was unresumable, no label lost or stored twice, steps contiguous, models consistent with the
data set. The 200-kill campaign is ``benchmarks/kill_campaign.py``."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from kill_campaign import campaign  # noqa: E402

pytestmark = pytest.mark.slow


def test_twenty_sigkills_lose_nothing(tmp_path):
    result = campaign(tmp_path, kills=20, seed=11, min_delay=4.0, max_delay=12.0, log=lambda line: None)
    assert result.kills == 20
    assert (result.unresumable, result.lost, result.duplicated) == (0, 0, 0), result.notes
    assert result.audit_problems == []
    # the kills hit a run that made progress: labels, retrains, steps
    assert result.labels_final > 8 and result.models_final >= 3 and result.steps_final > 10
