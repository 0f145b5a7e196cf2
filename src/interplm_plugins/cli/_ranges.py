"""Integer lists written as ranges on the command line (``--positions``, ``--features``)."""

from __future__ import annotations

from interplm_plugins.errors import InterPLMError


def parse_ranges(text: str, option: str) -> list[int]:
    """``"10,11,15-17"`` -> ``[10, 11, 15, 16, 17]``, in the order written; ``option`` names the flag in errors."""
    numbers: list[int] = []
    for part in text.split(","):
        part = part.strip()
        try:
            if "-" in part:
                lo, hi = (int(x) for x in part.split("-", 1))
                if hi < lo:
                    raise InterPLMError(f"{option}: range {part!r} runs backwards")
                numbers.extend(range(lo, hi + 1))
            elif part:
                numbers.append(int(part))
        except ValueError:
            raise InterPLMError(f"{option}: {part!r} is not a number or range like 10-12") from None
    if not numbers:
        raise InterPLMError(f"{option}: no numbers given")
    return numbers
