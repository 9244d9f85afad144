"""Roofline: device specs as data, the analytic cost model, and MBU / MFU conventions.

- :mod:`.specs` — :class:`DeviceSpec`, ``get_device_spec``, ``detect_device_spec``.
- :mod:`.cost` — :class:`Cost`, ``batch_cost``, ``seq_cost_arrays``, ``roofline_time_s``.
- :mod:`.metrics` — ``compute_metrics`` under the ``paper`` or ``si`` convention.
- :mod:`.calibration` — measured ceilings written by ``rpa-bench calibrate``.
- :mod:`.paper` — the paper's tables recomputed from their printed latencies.

Knows no kernel and no timer.
"""
