"""Inference: the streaming slice-batch segmenter, the CPU/GPU fast path and the ONNX Runtime backend.

May import ``scripts.common``, ``scripts.data`` and ``scripts.networks``; never ``scripts.outputs`` (the writer is
passed in by the config).
"""
