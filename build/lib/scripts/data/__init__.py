"""KiTS layout constants, datalists, input discovery, CT reading, input checks and the bundle's MONAI transforms.

May import ``scripts.common`` only (never inference, outputs, evaluation or anything above them).
"""
