"""The console command ``kidney-seg`` (``main``), the Python API ``segment`` (``api``), the checked
``python -m scripts.cli.bundle`` front of ``python -m monai.bundle`` (``bundle``) and what they share: where the
bundle's configs are (``paths``), argument checks with one-line errors (``validate``) and the in-process run of
``configs/inference.json``'s ``inferring`` workflow (``runner``). Issue 15.

May import every runtime package (it is the top of the runtime stack); nothing imports it.
"""
