"""Docs generators (complexity, partitions, network comparison) and the one "run a bundle workflow" helper.

Not runtime code: may import any package of ``scripts``; no runtime package imports it.
"""
