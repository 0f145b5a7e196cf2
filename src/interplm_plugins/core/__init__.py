"""The shared pipeline: no GUI imports here.

Modules, in the order data flows through them:
``sequences`` (FASTA), ``plm`` (ESM-2 loading), ``embed`` (per-residue embeddings and the on-disk
store), ``sae`` / ``train`` / ``normalize`` / ``evaluate`` (sparse autoencoders), ``uniprot``
(Swiss-Prot concept labels), ``concepts`` (feature-concept metrics), ``database`` (the SQLite
feature database), ``structure`` (structure-to-sequence residue mapping), ``activations``
(cached per-residue feature activations for the plugins), ``describe``, ``clusters``, ``steer``.
"""
