"""A tiny distribution for migtree's plugin-loading tests."""
