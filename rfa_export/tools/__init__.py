"""Tools on top of export and runtime: verify, inspect."""
