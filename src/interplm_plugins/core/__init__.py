"""The shared pipeline: no GUI imports here, and no session state.

One subpackage per stage, in the order data flows through them (docs/ARCHITECTURE.md draws the
tree): ``inputs`` (FASTA, UniProt entries, structures, chain references, homology clusters),
``plm`` (ESM-2 loading, the forward pass, embeddings and their on-disk store), ``sae`` (sparse
autoencoders: architectures, files, releases, training, normalisation, evaluation, provenance,
encoding), ``concepts`` (Swiss-Prot concept labels and feature-concept metrics), ``database``
(the SQLite feature database) and ``interpret`` (the pipeline with its activation cache, and
what is built on it: chains, feature reports, descriptions, clusters, steering, mutation scans,
exports). A stage imports only the stages before it; ``atomic``, ``allocator`` and ``parallel``
serve them all (tests/test_layout.py).
"""
