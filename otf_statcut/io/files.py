"""Writing model files so that a failing disk says so.

``torch.save(obj, path)`` hides the operating system's error behind its own ("unexpected pos",
"iostream error"): a full disk then reads as a bug. :func:`torch_save` serialises in memory and
writes with Python's own file calls, which raise :class:`OSError` with the errno (ENOSPC, EDQUOT,
EROFS, ...) that :func:`otf_statcut.errors.environment_failure` turns into one line naming the
path.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

__all__ = ["torch_save"]


def torch_save(obj: Any, path) -> None:
    """``torch.save`` through a memory buffer; errors of the disk surface as :class:`OSError`."""
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    with open(Path(path), "wb") as f:
        f.write(buffer.getbuffer())

