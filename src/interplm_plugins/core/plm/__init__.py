"""The protein language model: loading ESM-2, its forward pass and per-residue embeddings, the embedding
store, compute precision, and interventions inside the forward pass."""
