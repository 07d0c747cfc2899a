"""Pieces shared by several ops' backends (e.g. the Triton surrogate functions), apart from any one op."""
