"""Content-addressed storage: IPFS-compatible chunking and block layout."""
