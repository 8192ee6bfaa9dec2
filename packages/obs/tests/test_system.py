import psutil

from mlp_obs.system import system_snapshot


def test_snapshot_reads_this_machine():
    snapshot = system_snapshot()
    total = psutil.virtual_memory().total / 2**20
    assert 0 <= snapshot["system/cpu_utilization_percentage"] <= 100
    assert 0 < snapshot["system/system_memory_usage_megabytes"] < total
    assert 0 < snapshot["system/process_memory_rss_megabytes"] < total
    # No NVIDIA driver on this machine: no GPU keys, and no error.
    assert not [key for key in snapshot if key.startswith("system/gpu_")]
