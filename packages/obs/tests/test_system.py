import psutil

from mlp_obs import system
from mlp_obs.gpu import GpuInfo, GpuUnavailable, read_gpus
from mlp_obs.system import system_snapshot


def _gpu_keys(snapshot: dict[str, float]) -> set[str]:
    return {key for key in snapshot if key.startswith("system/gpu_")}


def test_snapshot_reads_this_machine():
    snapshot = system_snapshot()
    total = psutil.virtual_memory().total / 2**20
    assert 0 <= snapshot["system/cpu_utilization_percentage"] <= 100
    assert 0 < snapshot["system/system_memory_usage_megabytes"] < total
    assert 0 < snapshot["system/process_memory_rss_megabytes"] < total
    # GPU keys exactly when NVML reports GPUs here: none (and no error) on a machine without one.
    try:
        _, gpus = read_gpus()
    except GpuUnavailable:
        gpus = []
    memory_keys = {f"system/gpu_{gpu.index}_memory_usage_megabytes" for gpu in gpus}
    assert memory_keys <= _gpu_keys(snapshot)
    assert {key.split("_")[1] for key in _gpu_keys(snapshot)} == {str(g.index) for g in gpus}


def test_each_gpu_nvml_reports_becomes_its_keys(monkeypatch):
    gpus = [
        GpuInfo(
            0, "A", memory_used_bytes=3 * 2**20, memory_total_bytes=2**30, utilization_ratio=0.25
        ),
        GpuInfo(1, "MIG slice", 2**21, 2**30, utilization_ratio=None),
    ]
    monkeypatch.setattr(system, "read_gpus", lambda: ("550.54", gpus))
    snapshot = system_snapshot()
    assert {key: snapshot[key] for key in _gpu_keys(snapshot)} == {
        "system/gpu_0_memory_usage_megabytes": 3.0,
        "system/gpu_0_utilization_percentage": 25.0,
        "system/gpu_1_memory_usage_megabytes": 2.0,  # no utilization: the slice reports none
    }


def test_no_gpu_keys_when_nvml_is_unavailable(monkeypatch):
    def unavailable():
        raise GpuUnavailable("NVML cannot start (no NVIDIA driver?)")

    monkeypatch.setattr(system, "read_gpus", unavailable)
    snapshot = system_snapshot()
    assert not _gpu_keys(snapshot)
    assert "system/cpu_utilization_percentage" in snapshot
