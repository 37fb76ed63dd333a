"""KiTS evaluation: hierarchical regions (``regions``), the per-case metric (``case_metrics``), the CSV/JSON report
(``report``) and the ignite handler (``handler``).

May import ``scripts.common`` and ``scripts.data``.
"""
