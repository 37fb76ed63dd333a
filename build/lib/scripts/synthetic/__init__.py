"""SYNTHETIC KiTS-like phantoms: test and demo data. Imports nothing of ``scripts``; runtime code never imports it."""
