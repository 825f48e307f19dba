"""Which torch device a potential runs on: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"``.

The device is a property of a :class:`~otf_statcut.mlip.potential.NequIPPotential` (where its
weights live, where it trains and evaluates), not of its architecture: it is not stored in
``ModelConfig`` nor in a saved model directory, so a model trained on a GPU loads on a CPU and
vice versa.
"""

from __future__ import annotations

import torch

from otf_statcut.errors import ConfigError

__all__ = ["DEVICE_CHOICES", "resolve_device"]

#: The device names :func:`resolve_device` accepts (``"cuda:N"`` for a given GPU too).
DEVICE_CHOICES = ("cpu", "cuda", "auto")


def resolve_device(device: str | torch.device | None = "cpu") -> torch.device:
    """The concrete torch device for a device request.

    Parameters
    ----------
    device : str, torch.device or None
        ``"cpu"`` (also ``None``); ``"cuda"`` (the current GPU) or ``"cuda:N"``; ``"auto"``:
        ``"cuda"`` if ``torch.cuda.is_available()``, else ``"cpu"``.

    Returns
    -------
    torch.device
        ``cpu``, or ``cuda:N`` with an explicit index (so devices compare equal to a tensor's
        ``.device``).

    Raises
    ------
    ConfigError
        If the name is not one of the above, or a GPU is requested on a machine (or a torch
        build) without CUDA, or the GPU index does not exist.
    """
    if device is None:
        return torch.device("cpu")
    if isinstance(device, str) and device.strip().lower() == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    resolved = None
    if isinstance(device, (str, torch.device)):
        try:
            resolved = torch.device(device.strip().lower() if isinstance(device, str) else device)
        except (RuntimeError, TypeError, ValueError):
            pass
    if resolved is None or resolved.type not in ("cpu", "cuda"):
        raise ConfigError(
            f"device={device!r} is invalid: expected 'cpu', 'cuda', 'cuda:N' (a GPU index) or 'auto'"
        )
    if resolved.type == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        build = (f"torch {torch.__version__} built without CUDA" if torch.version.cuda is None
                 else f"torch {torch.__version__} built for CUDA {torch.version.cuda}, but no GPU is visible")
        raise ConfigError(
            f"device {str(device)!r} requested but torch.cuda.is_available() is False ({build}); "
            "use device 'cpu' or 'auto'"
        )
    index = torch.cuda.current_device() if resolved.index is None else resolved.index
    count = torch.cuda.device_count()
    if index >= count:
        raise ConfigError(f"device {str(device)!r} requested but only {count} CUDA device(s) are visible "
                          f"(indices 0..{count - 1})")
    return torch.device("cuda", index)
