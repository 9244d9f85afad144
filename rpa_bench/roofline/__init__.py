"""Roofline: device specs as data, the analytic cost model, and MBU / MFU conventions.

- :mod:`.specs` — :class:`DeviceSpec`, ``get_device_spec`` (pure data: devices.yaml).
- :mod:`.calibration` — this machine's measured ceilings (``rpa-bench calibrate``); ``resolve_roofline`` (the one place a
  device name becomes the spec and calibration a run divides by; ``auto`` detects).
- :mod:`.cost` — :class:`Cost`, ``batch_cost``, ``seq_cost_arrays``, ``roofline_time_s``.
- :mod:`.metrics` — ``compute_metrics`` under the ``paper`` or ``si`` convention.
- :mod:`.paper` — the paper's tables recomputed from their printed latencies.

Knows no kernel and no timer.
"""
