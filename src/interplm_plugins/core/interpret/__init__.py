"""Interpretation: the pipeline (PLM + SAE + database) with its activation cache, activations on structure
chains, feature reports, showcases, LLM descriptions, clusters, steering, mutation scans, exports and the
colour scale."""
