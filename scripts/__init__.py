"""Kidney and kidney-tumour CT segmentation bundle: networks, transforms and data tools.

Configs refer to these as ``scripts.<module>.<name>``; run MONAI bundle commands from the bundle root
so that ``scripts`` is importable (``python -m monai.bundle`` puts the working directory on ``sys.path``).
"""
