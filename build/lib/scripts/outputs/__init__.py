"""What a case leaves on disk: the segmentation writer, file formats (NIfTI, .seg.nrrd, DICOM SEG) and preview.

May import ``scripts.common`` and ``scripts.data``.
"""
