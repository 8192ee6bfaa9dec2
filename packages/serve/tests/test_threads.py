"""onnxruntime's threads per model: derived from the CPUs the process may use (affinity, cgroup
v1/v2 quotas read from a fake root) and the model's size, explicit settings winning, the choice
on the real session and in one log line per model."""

from __future__ import annotations

import os
from pathlib import Path

from serve_helpers import linear_model, logged_rows, write_bundle

from mlp_serve.config import ServeConfig
from mlp_serve.runtime import load_runtime
from mlp_serve.threads import (
    BYTES_PER_THREAD,
    CpuBudget,
    cgroup_cpu_quota,
    choose_threads,
    cpu_budget,
    model_bytes,
)

MIB = 1 << 20


def fake_cgroups(tmp_path: Path, membership: str, files: dict[str, str]) -> tuple[Path, Path]:
    """A /proc/self/cgroup holding ``membership`` and a cgroup root holding ``files``."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    proc = tmp_path / "proc_self_cgroup"
    proc.write_text(membership)
    root = tmp_path / "cgroup"
    root.mkdir()
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return proc, root


# -- cgroup quotas ----------------------------------------------------------------------------


def test_cgroup_v2_quota_is_the_tightest_of_the_group_and_its_parents(tmp_path: Path) -> None:
    proc, root = fake_cgroups(
        tmp_path,
        "0::/kubepods/pod1/app\n",
        {
            "cpu.max": "max 100000\n",
            "kubepods/cpu.max": "400000 100000\n",
            "kubepods/pod1/cpu.max": "150000 100000\n",
            "kubepods/pod1/app/cpu.max": "max 100000\n",
        },
    )
    assert cgroup_cpu_quota(proc, root) == 1.5
    budget = cpu_budget({0, 1, 2, 3, 4, 5, 6, 7}, proc, root)
    assert budget == CpuBudget(affinity=8, quota=1.5)
    assert budget.usable == 1  # 1.5 CPUs: one thread never waits for throttling


def test_cgroup_v2_inside_a_container_reads_the_mount_itself(tmp_path: Path) -> None:
    # With a cgroup namespace the process sees "0::/" and its group is the mount's root.
    proc, root = fake_cgroups(tmp_path, "0::/\n", {"cpu.max": "300000 100000\n"})
    assert cpu_budget({0, 1, 2, 3, 4, 5}, proc, root).usable == 3


def test_cgroup_v1_quota_per_controller_mount(tmp_path: Path) -> None:
    proc, root = fake_cgroups(
        tmp_path,
        "5:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n",
        {
            "cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "200000\n",
            "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000\n",
            # The memory controller's files say nothing about CPUs.
            "memory/docker/abc/cpu.cfs_quota_us": "50000\n",
            "memory/docker/abc/cpu.cfs_period_us": "100000\n",
        },
    )
    assert cgroup_cpu_quota(proc, root) == 2.0
    assert cpu_budget({0, 1, 2, 3}, proc, root).usable == 2


def test_no_quota_leaves_the_affinity(tmp_path: Path) -> None:
    unlimited_v1 = fake_cgroups(
        tmp_path / "v1",
        "2:cpu:/\n",
        {"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"},
    )
    unlimited_v2 = fake_cgroups(tmp_path / "v2", "0::/\n", {"cpu.max": "max 100000\n"})
    missing = (tmp_path / "no_such_file", tmp_path / "no_such_root")
    for proc, root in (unlimited_v1, unlimited_v2, missing):
        assert cgroup_cpu_quota(proc, root) is None
        assert cpu_budget({0, 1, 2}, proc, root).usable == 3


def test_the_affinity_caps_a_larger_quota() -> None:
    assert CpuBudget(affinity=2, quota=8.0).usable == 2
    assert CpuBudget(affinity=4, quota=0.5).usable == 1  # never below one


def test_this_process_budget_follows_its_affinity() -> None:
    budget = cpu_budget()
    assert budget.affinity == len(os.sched_getaffinity(0))
    assert 1 <= budget.usable <= budget.affinity


# -- the choice -------------------------------------------------------------------------------


def test_a_small_model_gets_one_thread_and_no_spinning() -> None:
    choice = choose_threads(CpuBudget(affinity=16), model_bytes=50_000)
    assert (choice.intra_op_threads, choice.spinning) == (1, False)
    assert "auto: 16 usable CPUs" in choice.reason and "small model" in choice.reason


def test_a_big_model_gets_threads_up_to_the_usable_cpus() -> None:
    big = 8 * BYTES_PER_THREAD
    roomy = choose_threads(CpuBudget(affinity=16), model_bytes=big)
    assert roomy.intra_op_threads == 8
    assert roomy.spinning  # 8 of 16 CPUs: some left for the front end
    tight = choose_threads(CpuBudget(affinity=16, quota=4.0), model_bytes=big)
    assert tight.intra_op_threads == 4
    assert not tight.spinning  # the pool fills every usable CPU: spinning would contend


def test_explicit_settings_win() -> None:
    budget = CpuBudget(affinity=1)
    explicit = choose_threads(budget, model_bytes=1000, intra_op_threads=3)
    assert explicit.intra_op_threads == 3 and explicit.reason == "serve.intra_op_threads"
    assert not explicit.spinning  # 3 threads on 1 CPU
    forced = choose_threads(budget, model_bytes=1000, intra_op_threads=3, spinning=True)
    assert forced.spinning
    off = choose_threads(CpuBudget(affinity=64), 64 * BYTES_PER_THREAD, spinning=False)
    assert off.intra_op_threads == 64 and not off.spinning


def test_model_bytes_counts_external_data(tmp_path: Path) -> None:
    (tmp_path / "model.onnx").write_bytes(b"x" * 1000)
    (tmp_path / "model.onnx.data").write_bytes(b"x" * 3 * MIB)
    assert model_bytes(tmp_path / "model.onnx") == 1000 + 3 * MIB
    assert model_bytes(tmp_path / "missing.onnx") == 0


# -- on the real session, and in the log ------------------------------------------------------


def thread_lines(path: Path) -> list[dict]:
    rows = logged_rows(path)
    return [r for r in rows if r["logger"] == "mlp_serve.runtime" and "intra-op" in r["event"]]


def session_settings(runtime) -> tuple[int, str]:
    options = runtime.session.get_session_options()
    return (
        options.intra_op_num_threads,
        options.get_session_config_entry("session.intra_op.allow_spinning"),
    )


def test_the_session_gets_the_derived_threads_and_says_so(repo: Path, log_rows: Path) -> None:
    model = write_bundle(repo, "linear", 1, linear_model()) / "model.onnx"
    runtime = load_runtime(model, ServeConfig(providers=["CPUExecutionProvider"]))
    assert runtime.threads is not None and runtime.threads.intra_op_threads == 1
    assert session_settings(runtime) == (1, "0")
    (line,) = thread_lines(log_rows)
    assert line["model"] == "linear/1"
    assert (line["intra_op_threads"], line["spinning"]) == (1, False)
    usable = cpu_budget().usable
    assert f"{usable} usable CPU" in line["event"] and "small model" in line["event"]


def test_explicit_threads_and_spinning_reach_the_session(repo: Path, log_rows: Path) -> None:
    model = write_bundle(repo, "linear", 1, linear_model()) / "model.onnx"
    config = ServeConfig(
        providers=["CPUExecutionProvider"], intra_op_threads=2, intra_op_spinning=True
    )
    runtime = load_runtime(model, config)
    assert session_settings(runtime) == (2, "1")
    (line,) = thread_lines(log_rows)
    assert "serve.intra_op_threads" in line["event"] and line["spinning"] is True


def test_the_warm_up_times_the_model(repo: Path) -> None:
    model = write_bundle(repo, "linear", 1, linear_model()) / "model.onnx"
    runtime = load_runtime(model, ServeConfig(providers=["CPUExecutionProvider"]))
    assert runtime.run_seconds is None
    runtime.warmup()
    assert runtime.run_seconds is not None and 0 < runtime.run_seconds < 1.0
