"""Sparse autoencoders: the model and its kinds, files, published releases, training (one process or data
parallel), normalisation, evaluation, provenance checks, and encoding proteins into features."""
