"""The shared pipeline: cached activations, the session's pipeline, structure chains mapped to activations."""

from __future__ import annotations

import numpy as np
import pytest

from interplm_plugins.core.database.schema import FeatureDatabase
from interplm_plugins.core.inputs.structure import read_structure
from interplm_plugins.core.interpret.chains import chain_activations
from interplm_plugins.core.plm.embed import embed_sequences
from interplm_plugins.core.sae.encode import encode_features
from interplm_plugins.errors import InterPLMError
from interplm_plugins.session import current_pipeline


def test_activations_match_embedding_then_sae_and_are_cached(tiny_pipeline, tiny_db_records):
    rec = tiny_db_records[0]
    acts = tiny_pipeline.activations(rec.sequence)
    (_, reps), = embed_sequences(tiny_pipeline.plm, [rec], [2])
    np.testing.assert_allclose(acts, encode_features(tiny_pipeline.sae, reps[2]), atol=1e-5)
    assert acts.shape == (len(rec.sequence), 64) and acts.min() >= 0
    misses = tiny_pipeline.cache.misses
    again = tiny_pipeline.activations(rec.sequence)
    assert tiny_pipeline.cache.misses == misses and again is acts
    # A fresh in-memory cache still finds the result on disk (what another program would see).
    tiny_pipeline.cache._items.clear()
    np.testing.assert_allclose(tiny_pipeline.activations(rec.sequence), acts, atol=2e-3)
    assert current_pipeline() is tiny_pipeline


def test_unknown_feature_is_a_clear_error(tiny_pipeline):
    with pytest.raises(InterPLMError, match="feature 64 does not exist"):
        tiny_pipeline.check_feature(64)


def test_partial_structure_maps_to_full_length_activations(tiny_pipeline, shared_data):
    import csv

    rows = {r["file"]: r for r in csv.DictReader(open(shared_data / "structures" / "manifest.tsv"), delimiter="\t")}
    from interplm_plugins.core.inputs.sequences import read_fasta

    fasta = {r.id: r.sequence for r in read_fasta(shared_data / "sequences" / "swissprot_train.fasta")}
    name = "P0DP23_3WFN_calm1.pdb"
    chain = read_structure(shared_data / "structures" / name)[0]
    acc = rows[name]["uniprot_accession"]
    offset = int(rows[name]["uniprot_pos_equals_resnum_plus"])
    mapped = chain_activations(tiny_pipeline, chain, reference=fasta[acc])
    full = tiny_pipeline.activations(fasta[acc])
    values = mapped.feature_values(5)
    ok = mapped.positions >= 0
    assert ok.sum() >= 140  # the structure covers UniProt 7-155 (149 residues), plus ions and a tag
    # The alignment lands each residue where the manifest's numbering says it is.
    expected = np.array([r.resi + offset - 1 for r in chain.residues])
    assert (mapped.positions[ok] == expected[ok]).mean() > 0.95
    np.testing.assert_allclose(values[ok], full[mapped.positions[ok], 5])


def test_database_has_concepts_and_examples(tiny_db_path):
    with FeatureDatabase(tiny_db_path) as db:
        assert db.num_features == 64
        assert db.concept_names()
        ex = db.top_examples(0, 3)
        assert ex and ex[0].max_activation >= ex[-1].max_activation
