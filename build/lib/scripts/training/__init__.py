"""Training support: resumable checkpoints, engine handlers and multi-process (DDP) helpers.

May import ``scripts.common``, ``scripts.data`` and ``scripts.networks``.
"""
