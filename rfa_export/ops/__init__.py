"""Operators of rfa-export, one folder each: a naive reference beside every fast path."""
