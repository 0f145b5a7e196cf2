"""Reading weight files without running code: ``torch.load(weights_only=True)`` and what its failures mean.

Checkpoints are read with ``torch.load(weights_only=True)``; fair-esm's checkpoints hold an
``argparse.Namespace`` (``cfg.model``), which is allowlisted here, on import, and nothing else is
unpickled.
"""

from __future__ import annotations

import argparse
import os
import warnings

import torch

from interplm_plugins.errors import InterPLMError

torch.serialization.add_safe_globals([argparse.Namespace])


def torch_load_failure(exc: BaseException) -> str:
    """One line saying why ``torch.load(weights_only=True)`` refused or failed to read a file.

    A file that needs more than tensors and allowlisted types is refused without unpickling the
    rest (it could run code); torch's own message for that suggests ``weights_only=False``, which
    this toolkit never does, so it is replaced.
    """
    import pickle
    import re

    text = str(exc).strip()
    if isinstance(exc, pickle.UnpicklingError) and "Weights only load failed" in text:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
        what = f" ({found.group(1)})" if found else ""
        return f"refused: the file holds pickled Python objects other than tensors{what}, and loading them could run code"
    reason = text.splitlines()[0][:200] if text else "no data"
    if isinstance(exc, (EOFError, OSError, RuntimeError)):  # zip reader or unpickler ran out of data
        return f"truncated or damaged file ({type(exc).__name__}: {reason})"
    return f"{type(exc).__name__}: {reason}"


def torch_load_weights(path: str | os.PathLike):
    """``torch.load(path, weights_only=True)`` on the CPU, without torch's warnings on stderr
    (the command line prints one line per failure). Raises what ``torch.load`` raises."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.load(str(path), map_location="cpu", weights_only=True)


def torch_load_tensor_dict(path: str | os.PathLike, readable: str, state_dict: str) -> dict:
    """A file that must hold a dict of tensors (a state dict), read with ``weights_only=True``; otherwise one
    line: ``not a readable <readable> file (why)`` or ``not <state_dict> (expected a dict of tensors)``."""
    try:
        state = torch_load_weights(path)
    except Exception as exc:  # truncated, foreign or unsafe pickles raise many types
        raise InterPLMError(f"not a readable {readable} file ({torch_load_failure(exc)})", file=path) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InterPLMError(f"not {state_dict} (expected a dict of tensors)", file=path)
    return dict(state)
