"""What the pipeline reads: protein sequences (FASTA), UniProt entries, structures, the reference
sequences structure chains are matched to, and sequence clusters for homology-aware splits."""
