"""KiTS evaluation: hierarchical regions, the per-case metric, the CSV/JSON report and the ignite handler.

May import ``scripts.common`` and ``scripts.data``.
"""
