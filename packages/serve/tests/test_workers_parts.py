"""The pieces of ``mlp serve --workers N`` without a server: the shared state folder, the port
reservations, the worker count, the config key, and the metrics of several processes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap

import pytest

from mlp_core.errors import ConfigError, ServingError
from mlp_serve.config import load_serve_config
from mlp_serve.threads import WORKER_CPUS_ENV, CpuBudget, choose_threads, cpu_budget
from mlp_serve.workers.ports import reserve_port
from mlp_serve.workers.shared_state import SharedState, WorkerState
from mlp_serve.workers.supervisor import resolve_workers, usable_cpus


def test_admin_actions_get_increasing_generations_and_replay_in_order(tmp_path):
    state = SharedState(tmp_path)
    assert state.read_admin().generation == 0
    assert state.record_admin("a", "unload") == 1
    assert state.record_admin("b", "unload") == 2
    assert state.record_admin("a", "load") == 3
    admin = state.read_admin()
    assert admin.generation == 3
    # Only each model's last word is kept, oldest first.
    assert admin.since(0) == [(2, "b", "unload"), (3, "a", "load")]
    assert admin.since(2) == [(3, "a", "load")]
    assert admin.since(3) == []


def test_live_workers_are_the_files_the_supervisor_has_not_removed(tmp_path):
    state = SharedState(tmp_path)
    state.write_worker(WorkerState(pid=11, slot=0, generation=-1, ready=False))
    state.write_worker(WorkerState(pid=12, slot=1, generation=4, ready=True))
    (tmp_path / "worker-13.json").write_text("{not json")  # never written so, but never fatal
    assert state.live_pids() == [11, 12]
    assert state.workers()[12] == WorkerState(12, 1, 4, True)
    state.remove_worker(11)
    assert state.live_pids() == [12]


def test_a_reserved_port_admits_workers_with_so_reuseport_only(tmp_path):
    reserved = reserve_port("127.0.0.1", 0, "REST")
    port = reserved.getsockname()[1]
    try:
        assert port > 0
        worker = socket.socket()
        worker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        worker.bind(("127.0.0.1", port))
        worker.listen()
        worker.close()
        with socket.socket() as other, pytest.raises(OSError):
            other.bind(("127.0.0.1", port))  # anyone else: address in use
    finally:
        reserved.close()


def test_a_busy_port_is_refused_even_if_its_owner_set_so_reuseport():
    with socket.socket() as busy:
        # Another server of the same user with SO_REUSEPORT: sharing would "succeed" silently.
        busy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ServingError, match=rf"cannot listen for gRPC on 127.0.0.1:{port}"):
            reserve_port("127.0.0.1", port, "gRPC")


def test_worker_count_auto_is_the_usable_cpus():
    assert 1 <= usable_cpus() <= len(os.sched_getaffinity(0))
    assert resolve_workers("auto") == usable_cpus()
    assert resolve_workers(0) == usable_cpus()
    assert resolve_workers(3) == 3


def test_workers_config_key_and_its_errors():
    assert load_serve_config(None, ["workers=auto"]).workers == "auto"
    assert load_serve_config(None, ["workers=4"]).workers == 4
    assert load_serve_config(None, []).workers == 1
    with pytest.raises(ConfigError, match="serve.workers"):
        load_serve_config(None, ["workers=-2"])
    with pytest.raises(ConfigError, match="serve.workers"):
        load_serve_config(None, ["workers=many"])


def test_metrics_of_two_processes_are_summed_by_either(tmp_path):
    # Two real processes write their families to one multiprocess folder; a third renders them.
    writer = textwrap.dedent(
        """
        import sys
        from mlp_obs.metrics import CollectorRegistry, InferenceMetrics
        metrics = InferenceMetrics(CollectorRegistry())
        for _ in range(int(sys.argv[1])):
            with metrics.track_request("m", "1", "rest"):
                pass
        metrics.model_loaded("m", "1", "CPU")
        """
    )
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    for count in ("3", "4"):
        subprocess.run([sys.executable, "-c", writer, count], env=env, check=True, timeout=60)
    reader = textwrap.dedent(
        """
        import os, sys
        from mlp_obs.metrics import render
        from mlp_obs.multiprocess import multiprocess_registry
        body, _ = render(multiprocess_registry(sys.argv[1], lambda: [os.getpid()]))
        print(body.decode())
        """
    )
    text = subprocess.run(
        [sys.executable, "-c", reader, str(tmp_path)],
        env=env,
        check=True,
        timeout=60,
        capture_output=True,
        text=True,
    ).stdout
    assert (
        'mlp_inference_requests_total{model="m",protocol="rest",status="ok",version="1"} 7.0'
        in text
    )
    assert 'mlp_inference_model_info{model="m",provider="CPU",version="1"} 1.0' in text
    assert "process_cpu_seconds_total{pid=" in text


def test_a_worker_sizes_its_thread_pools_for_its_share_of_the_cpus(monkeypatch):
    monkeypatch.delenv(WORKER_CPUS_ENV, raising=False)
    assert cpu_budget(affinity={0, 1, 2, 3}).worker_share is None
    monkeypatch.setenv(WORKER_CPUS_ENV, "1")
    shared = cpu_budget(affinity={0, 1, 2, 3})
    assert shared.usable == 1 and "worker share 1" in shared.describe()
    # A large model that would take every CPU takes only the worker's share.
    assert choose_threads(shared, model_bytes=64 << 20).intra_op_threads == 1
    assert choose_threads(CpuBudget(4), model_bytes=64 << 20).intra_op_threads == 4
