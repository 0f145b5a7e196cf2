"""The SAE kinds by name (no torch import: the command line builds its options from these)."""

from __future__ import annotations

KINDS = ("relu", "topk", "batchtopk", "jumprelu", "matryoshka")
#: Kinds that choose features by batch top-k in training and by an estimated threshold at inference.
BATCH_KINDS = ("batchtopk", "matryoshka")
#: Kinds that need ``k``.
K_KINDS = ("topk", "batchtopk", "matryoshka")
