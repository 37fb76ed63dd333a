"""Errors (one-line ``InputError``), atomic writes and argument checks. Imports nothing else of ``scripts``."""
