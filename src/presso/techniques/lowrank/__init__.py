"""Low-rank factorization: truncated SVD of Linear layers, Tucker-2 of convolutions."""
