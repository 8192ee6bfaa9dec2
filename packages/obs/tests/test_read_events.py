"""mlp_obs.tracking.read_events and tracked_run_id: reading a run's tracking.jsonl back."""

import json

from mlp_obs.tracking import create_tracker, read_events, tracked_run_id


def write_lines(run_dir, *lines):
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "tracking.jsonl").write_text("".join(lines), encoding="utf-8")


def test_no_record_is_no_events(tmp_path):
    assert read_events(tmp_path) == []
    assert tracked_run_id(tmp_path) is None


def test_a_torn_last_line_is_skipped_and_the_rest_counts(tmp_path):
    start = {"event": "start_run", "run_id": "abc", "run_name": "r"}
    metrics = {"event": "metrics", "metrics": {"loss": 0.5}, "step": 1}
    torn = json.dumps({"event": "metrics", "metrics": {"loss": 0.4}})[:17]  # killed mid-write
    write_lines(tmp_path, json.dumps(start) + "\n", "\n", json.dumps(metrics) + "\n", torn)
    assert read_events(tmp_path) == [start, metrics]
    assert tracked_run_id(tmp_path) == "abc"


def test_lines_that_are_not_events_are_skipped(tmp_path):
    write_lines(tmp_path, "[1, 2]\n", '"text"\n', '{"event": "end_run", "status": "FINISHED"}\n')
    assert read_events(tmp_path) == [{"event": "end_run", "status": "FINISHED"}]
    assert tracked_run_id(tmp_path) is None  # no start_run: never tracked


def test_the_run_id_is_the_first_start_runs(tmp_path):
    write_lines(
        tmp_path,
        '{"event": "start_run"}\n',  # no id: not an answer
        '{"event": "start_run", "run_id": "first"}\n',
        '{"event": "start_run", "run_id": "resumed-later"}\n',
    )
    assert tracked_run_id(tmp_path) == "first"


def test_a_tracked_run_reads_back(tmp_path):
    run_dir = tmp_path / "run"
    with create_tracker(run_dir, runs_root=tmp_path, backend="local") as tracker:
        run_id = tracker.start_run("reading-back")
        tracker.log_metrics({"loss": 0.25}, step=3)
    events = read_events(run_dir)
    assert events[0]["event"] == "start_run" and events[-1]["event"] == "end_run"
    assert tracked_run_id(run_dir) == run_id
