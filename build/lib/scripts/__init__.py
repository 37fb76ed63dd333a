"""Kidney and kidney-tumour CT segmentation bundle (MONAI bundle ``scripts`` package).

Nothing is imported here: importing one part must not import all of them. Configs name components by their full
module path (``"_target_": "scripts.networks.WPUNet"``); run bundle commands from the bundle root (or with it on
``PYTHONPATH``). ``docs/architecture.md`` lists the packages, their roles and which may import which.
"""
