"""mlp_core.runs.RunFiles: the one list of what a run folder holds."""

import pytest

from mlp_core.runs import RunFiles

NAMES = {
    "config": "config.yaml",
    "log": "log.jsonl",
    "dataset": "dataset.json",
    "preprocessing": "preprocessing.json",
    "epoch_metrics": "metrics.jsonl",
    "epoch_metrics_csv": "metrics.csv",
    "checkpoints": "checkpoints",
    "model": "model",
    "metrics": "metrics.json",
    "plots": "plots",
    "tracking": "tracking.jsonl",
}


def test_each_file_has_a_path_in_the_run_folder(tmp_path):
    files = RunFiles(tmp_path)
    assert files.root == tmp_path
    for attribute, filename in NAMES.items():
        assert getattr(files, attribute) == tmp_path / filename
        assert getattr(RunFiles, attribute.upper()) == filename


def test_unknown_names_are_attribute_errors(tmp_path):
    files = RunFiles(tmp_path)
    for name in ("weights", "Config", "finished"):  # FINISHED is a tuple, not a file
        with pytest.raises(AttributeError):
            getattr(files, name)


def test_missing_lists_what_a_finished_run_lacks(tmp_path):
    files = RunFiles(tmp_path)
    assert RunFiles.FINISHED == ("config.yaml", "dataset.json", "preprocessing.json", "model")
    assert files.missing() == list(RunFiles.FINISHED)
    files.config.write_text("model: {name: x}\n")
    files.model.write_bytes(b"weights")
    assert files.missing() == ["dataset.json", "preprocessing.json"]
    files.dataset.write_text("{}")
    files.preprocessing.write_text("{}")
    assert files.missing() == []
