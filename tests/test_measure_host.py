import sys

import pytest

from rpa_bench.measure import environment, host


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt is Linux-only")
def test_cpu_mmap_threshold_is_fixed_and_recorded_in_the_environment():
    result = host.fix_mmap_threshold()
    assert result["malloc_mmap_threshold_bytes"] == host.CPU_MMAP_THRESHOLD_BYTES
    assert environment.environment()["host_allocator"] == result


def test_negative_threshold_is_refused_naming_it():
    with pytest.raises(ValueError, match="threshold_bytes=-1"):
        host.fix_mmap_threshold(-1)
