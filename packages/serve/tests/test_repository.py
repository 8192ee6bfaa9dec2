"""The model repository: corrupt bundles, new versions by polling, load and unload."""

from __future__ import annotations

import time

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from serve_helpers import B, W, cpu_config, linear_model, wait_for, write_bundle
from tritonclient.utils import InferenceServerException

from mlp_core.files import sha256_file
from mlp_serve.server import BackgroundServer

X = np.ones((1, 4), np.float32)


def infer(client, name="linear", version=""):
    tensor = triton.InferInput("x", [1, 4], "FP32")
    tensor.set_data_from_numpy(X)
    result = client.infer(name, [tensor], model_version=version)
    return result.get_response()["model_version"], result.as_numpy("y")


def client_for(server):
    return triton.InferenceServerClient(server.http_url.removeprefix("http://"))


def test_corrupt_bundle_is_refused_while_the_others_serve(repo):
    write_bundle(repo, "linear", 1, linear_model())
    write_bundle(repo, "corrupt", 1, linear_model(), sha256="0" * 64)
    with BackgroundServer(repo, cpu_config()) as server:
        client = client_for(server)
        assert client.is_server_ready()  # models=None: ready once any model is
        assert not client.is_model_ready("corrupt")
        version, y = infer(client)
        assert version == "1"
        np.testing.assert_allclose(y, X @ W + B, rtol=1e-5)
        with pytest.raises(InferenceServerException) as info:
            infer(client, "corrupt")
        assert info.value.status() == "503"
        assert "sha256" in info.value.message()
        index = {row["name"]: row for row in client.get_model_repository_index()}
        assert index["corrupt"]["state"] == "UNAVAILABLE"
        assert "does not match the manifest" in index["corrupt"]["reason"]
        assert index["linear"]["state"] == "READY"


def test_listed_models_decide_readiness(repo):
    write_bundle(repo, "linear", 1, linear_model())
    write_bundle(repo, "other", 1, linear_model())
    with BackgroundServer(repo, cpu_config(models=["linear", "missing"])) as server:
        client = client_for(server)
        assert not client.is_server_ready()  # "missing" is listed but not in the repository
        assert client.is_model_ready("linear")
        with pytest.raises(InferenceServerException) as info:
            infer(client, "other")  # on disk, but not listed: not served
        assert info.value.status() == "404"


def test_new_version_becomes_default_and_a_broken_one_never_replaces_it(repo):
    write_bundle(repo, "linear", 1, linear_model())
    with BackgroundServer(repo, cpu_config(poll_seconds=0.1)) as server:
        client = client_for(server)
        assert infer(client)[0] == "1"

        write_bundle(repo, "linear", 2, linear_model(W * 3, B))
        wait_for(lambda: infer(client)[0] == "2")
        np.testing.assert_allclose(infer(client)[1], X @ (W * 3) + B, rtol=1e-5)
        assert client.get_model_metadata("linear")["versions"] == ["1", "2"]
        assert infer(client, version="1")[0] == "1"  # older versions stay addressable

        # Garbage with a matching sha256 passes the hash check but cannot load.
        garbage = write_bundle(repo, "linear", 3, b"this is not an onnx model", manifest=False)
        write_bundle(
            repo,
            "linear",
            3,
            b"this is not an onnx model",
            sha256=sha256_file(garbage / "model.onnx"),
        )
        state = {}

        def refused() -> bool:
            rows = client.get_model_repository_index()
            state.update({r["version"]: r for r in rows if r["name"] == "linear"})
            return "cannot load" in state.get("3", {}).get("reason", "")

        wait_for(refused)
        assert state["3"]["state"] == "UNAVAILABLE"
        assert "onnxruntime cannot load it" in state["3"]["reason"]
        time.sleep(0.3)  # a few more polls: the broken version is not retried into service
        assert infer(client)[0] == "2"
        assert client.is_model_ready("linear")
        assert not client.is_model_ready("linear", "3")


def test_load_and_unload_need_the_admin_token(repo):
    write_bundle(repo, "linear", 1, linear_model())
    config = cpu_config(admin_token="s3cret")
    with BackgroundServer(repo, config) as server:
        client = client_for(server)
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            with pytest.raises(InferenceServerException) as info:
                client.unload_model("linear", headers=headers)
            assert info.value.status() == "401"
        assert client.is_model_ready("linear")

        admin = {"Authorization": "Bearer s3cret"}
        client.unload_model("linear", headers=admin)
        assert not client.is_model_ready("linear")
        assert not client.is_server_ready()
        with pytest.raises(InferenceServerException) as info:
            infer(client)
        assert info.value.status() == "503"
        assert "unloaded" in info.value.message()

        client.load_model("linear", headers=admin)
        assert client.is_model_ready("linear")
        assert infer(client)[0] == "1"
        with pytest.raises(InferenceServerException) as info:
            client.load_model("nope", headers=admin)
        assert info.value.status() == "404"


def test_repository_api_is_off_without_an_admin_token(repo):
    write_bundle(repo, "linear", 1, linear_model())
    with BackgroundServer(repo, cpu_config()) as server:
        response = httpx.post(f"{server.http_url}/v2/repository/models/linear/unload")
        assert response.status_code == 401
        assert "no admin token" in response.json()["error"]
        ready = httpx.post(f"{server.http_url}/v2/repository/index", json={"ready": True})
        assert [row["name"] for row in ready.json()] == ["linear"]
