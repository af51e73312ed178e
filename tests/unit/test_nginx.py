"""nginx's configuration as generated from the serve settings, checked by nginx itself (`nginx -t`)."""
from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from ssd_detector.serving import nginx
from ssd_detector.serving.settings import ServeSettings


def settings(**environ: str) -> ServeSettings:
    return ServeSettings.from_env(Path("/opt/ml/model"), environ, cpu_count=2)


def layout(tmp_path: Path) -> nginx.Layout:
    return nginx.Layout(root=tmp_path / "nginx", socket=tmp_path / "gunicorn.sock")


def test_the_config_follows_the_settings(tmp_path: Path):
    text = nginx.render(settings(SAGEMAKER_BIND_TO_PORT="9090", SAGEMAKER_MAX_PAYLOAD_IN_MB="3",
                                 SAGEMAKER_MODEL_SERVER_TIMEOUT="17"), layout(tmp_path))
    assert "listen 9090 backlog=4096;" in text
    assert f"client_max_body_size {3 * 1024 * 1024};" in text
    assert "proxy_read_timeout 17s;" in text and "proxy_request_buffering on;" in text
    assert f"server unix:{tmp_path / 'gunicorn.sock'}" in text
    assert re.findall(r"location = (\S+) \{", text) == ["/ping", "/invocations", "/execution-parameters"]
    assert "\nuser " not in text
    assert "user nobody nogroup;" in nginx.render(settings(), layout(tmp_path), "nobody nogroup")


def test_listen_names_the_host_unless_it_is_every_address(tmp_path: Path):
    def listen(host: str) -> str:
        s = ServeSettings.from_env(Path("m"), {}, cpu_count=2, host=host, port=8081)
        return re.search(r"listen (\S+) backlog", nginx.render(s, layout(tmp_path))).group(1)

    assert [listen(h) for h in ("0.0.0.0", "127.0.0.1", "::1")] == ["8081", "127.0.0.1:8081", "[::1]:8081"]


def test_every_error_nginx_answers_itself_is_our_json_body(tmp_path: Path):
    text = nginx.render(settings(SAGEMAKER_MAX_PAYLOAD_IN_MB="1"), layout(tmp_path))
    bodies = dict(re.findall(r"return (\d+) '(.*)\\n';", text))
    assert {"404", "413", "502", "504"} <= set(bodies)
    for status, body in bodies.items():
        declared = body.replace("${too_large_size}", "1048577 bytes, over the limit of ")
        parsed = json.loads(declared)
        assert set(parsed) == {"error", "message"} and "$" not in declared, status
    assert json.loads(bodies["413"].replace("${too_large_size}", "1048577 bytes, over the limit of "))["message"] == (
        "the body is 1048577 bytes, over the limit of 1048576 bytes (1 MB, SAGEMAKER_MAX_PAYLOAD_IN_MB)")


def test_nginx_accepts_the_config(tmp_path: Path):
    binary = nginx.find_nginx()
    assert binary, "make install installs nginx"
    config = nginx.write_config(settings(), layout(tmp_path))
    run = nginx.command(binary, config, config.parent)
    assert run[-2:] == ["-e", "stderr"], "Debian bookworm's nginx (1.22) takes -e"
    result = subprocess.run([binary, "-t", *run[1:]], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr


def test_find_nginx_is_none_when_nginx_is_nowhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(nginx, "SEARCH_DIRS", (str(tmp_path),))
    assert nginx.find_nginx() is None
    fake = tmp_path / "nginx"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    assert nginx.find_nginx() == str(fake)


def test_multi_model_mode_routes_the_models_api(tmp_path: Path):
    import dataclasses

    text = nginx.render(dataclasses.replace(settings(), multi_model=True), layout(tmp_path))
    assert "location = /models {" in text and "location /models/ {" in text
    assert "location /models/" not in nginx.render(settings(), layout(tmp_path))
