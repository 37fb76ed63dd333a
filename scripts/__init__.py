"""Kidney and kidney-tumour CT segmentation bundle: networks, transforms, handlers and data tools.

Configs refer to these as ``scripts.<module>.<name>``; run MONAI bundle commands from the bundle root
so that ``scripts`` is importable (``python -m monai.bundle`` puts the working directory on ``sys.path``).
"""

from .checkpoint import ResumableCheckpoint
from .errors import InputError, InputErrorHandler
from .metrics import KiTSCaseMetrics, KiTSMetricsHandler, LabelToRegionsd
from .networks import WPUNet
from .validation import LoadImageCheckedd, ValidateCTd
from .writers import SaveSegmentationd

__all__ = [
    "InputError",
    "InputErrorHandler",
    "KiTSCaseMetrics",
    "KiTSMetricsHandler",
    "LabelToRegionsd",
    "LoadImageCheckedd",
    "ResumableCheckpoint",
    "SaveSegmentationd",
    "ValidateCTd",
    "WPUNet",
]
