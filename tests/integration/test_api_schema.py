"""The API keeps the promises of its own OpenAPI document: the schemathesis CLI (all checks, fixed seed, bounded
examples) against `covidct serve`'s app running on 127.0.0.1, on a socket the test bound itself (no port race)."""

import asyncio
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from covidct.inference.load import load_trained
from covidct.inference.serve import create_app


class LiveServer:
    """uvicorn serving `app` on a socket bound here first, in a thread; stopped on exit."""

    def __init__(self, app):
        import uvicorn

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        self.thread = threading.Thread(target=lambda: asyncio.run(self.server.serve(sockets=[self.sock])), daemon=True)

    def __enter__(self):
        self.thread.start()
        while not self.server.started:
            self.thread.join(0.05)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()


@pytest.mark.parametrize("api_key", [None, "secret"])
def test_api_conforms_to_its_schema(exported_model, api_key, tmp_path):
    st = Path(sys.executable).with_name("st")
    if not st.exists():
        pytest.skip("schemathesis is not installed (pip install -e '.[dev]')")
    app = create_app(load_trained(exported_model), api_key=api_key)
    # Every check but positive_data_acceptance: an OpenAPI schema can say "a binary file of 1 byte to 20 MB" but not
    # "a decodable PNG, JPEG or DICOM", so random bytes are rightly refused (415/422, documented).
    config = tmp_path / "schemathesis.toml"
    config.write_text('[checks.positive_data_acceptance]\nexpected-statuses = ["2xx", "401", "415", "422"]\n')
    with LiveServer(app) as base:
        cmd = [
            str(st),
            "--no-color",
            "--config-file",
            str(config),
            "run",
            f"{base}/openapi.json",
            "--checks",
            "all",
            "--exclude-checks",
            "positive_data_acceptance",
            "--seed",
            "1",
            "--max-examples",
            "100",
            "--generation-deterministic",
            "--workers",
            "1",
        ]
        if api_key:
            cmd += ["-H", f"X-API-Key: {api_key}"]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-2000:]


def test_errors_are_declared_with_their_shape(exported_model):
    app = create_app(load_trained(exported_model), api_key="k")
    doc = app.openapi()
    predict = doc["paths"]["/api/v1/predict"]["post"]
    assert {"401", "413", "415", "422"} <= set(predict["responses"])
    ref = predict["responses"]["422"]["content"]["application/json"]["schema"]["$ref"]
    detail = doc["components"]["schemas"]["ErrorDetail"]["properties"]["detail"]
    assert ref.endswith("/ErrorDetail") and detail["type"] == "string"
    body = predict["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert body["required"] == ["file"] and body["properties"]["file"]["minLength"] == 1
