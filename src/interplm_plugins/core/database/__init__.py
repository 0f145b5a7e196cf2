"""The SQLite feature database: :mod:`~.schema` (the schema, the result types and the read-only
:class:`FeatureDatabase`), :mod:`~.build` (writing and updating one), :mod:`~.from_pipeline` (an
SAE's database over its PLM in one pass) and :mod:`~.provenance` (using one only with the SAE it
was built with).

This package gathers the reader's and the writer's names, so ``from interplm_plugins.core.database.schema
import FeatureDatabase`` keeps working; like the old module it imports no torch (``from_pipeline``,
which runs the PLM, is imported from its own module).
"""

from interplm_plugins.core.database.build import build_feature_database, update_feature_database
from interplm_plugins.core.database.schema import (
    APPLICATION_ID,
    DEFAULT_CONCEPT_FLOOR,
    NO_CONCEPT_MATCH,
    SCHEMA_VERSION,
    ConceptMatch,
    Example,
    FeatureDatabase,
    FeatureHit,
    concept_label,
    concept_match_lines,
    decode_activations,
    encode_activations,
)

__all__ = [
    "build_feature_database", "update_feature_database",
    "APPLICATION_ID", "DEFAULT_CONCEPT_FLOOR", "NO_CONCEPT_MATCH", "SCHEMA_VERSION", "ConceptMatch", "Example", "FeatureDatabase", "FeatureHit",
    "concept_label", "concept_match_lines", "decode_activations", "encode_activations",
]  # fmt: skip
