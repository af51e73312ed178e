"""The image in a real Docker engine: `train`, `serve` and a two-container distributed job, as
SageMaker runs them. `make image-test` builds the CPU image and runs these (SSD_IMAGE names it)."""
from __future__ import annotations

import json
import os
import shutil
import tarfile
import subprocess
import time
from pathlib import Path

import pytest

from ssd_detector.data.images import encode
from ssd_detector.data.synthetic import SynthSpec, generate, make_image
from ssd_detector.sagemaker_env import write_job

from docker_helpers import docker, name, request, wait_for_ping
from ports import free_port

IMAGE = os.environ.get("SSD_IMAGE", "ssd-detector:cpu")
HYPER = {"num_classes": "3", "base_network": "mobilenet-0.25", "image_shape": "64", "mini_batch_size": "8",
         "epochs": "2", "learning_rate": "0.02", "use_pretrained_model": "0"}


@pytest.fixture(scope="module", autouse=True)
def engine() -> None:
    usable = shutil.which("docker") and docker("info", timeout=60).returncode == 0
    if not usable:
        if os.environ.get("CI"):
            pytest.fail("Docker cannot run here, and CI must run the image tests")
        pytest.skip("Docker cannot run on this machine (no engine answers `docker info`)")
    if docker("image", "inspect", IMAGE).returncode != 0:
        pytest.fail(f"image {IMAGE} is not built; run `make image-test`")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("image-data")
    generate(out, SynthSpec(train=16, validation=4, classes=3, width=128, height=96, seed=4, format="recordio"))
    return out


def opt_ml(root: Path, data: Path, hyperparameters: dict, resources: dict | None = None) -> Path:
    channels = {d.name: d for d in data.iterdir() if d.is_dir()}
    base = write_job(root / "opt_ml", hyperparameters, channels, resource_config=resources).base
    os.chmod(base, 0o777)  # the container may run as another uid
    return base


def test_train_writes_the_model_and_metric_lines(tmp_path: Path, data: Path):
    base = opt_ml(tmp_path, data, HYPER)
    result = docker("run", "--rm", "-v", f"{base}:/opt/ml", IMAGE, "train")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "#quality_metric: host=algo-1, epoch=1, validation mAP <score>=(" in result.stderr
    assert "#throughput_metric: host=algo-1, train throughput=" in result.stderr
    assert sorted(p.name for p in (base / "model").iterdir()) == [
        "classes.json", "hyperparams.json", "model_algo_1-0000.params", "model_algo_1-symbol.json"]
    assert not (base / "output/failure").exists()


def test_train_and_serve_on_path_and_info():
    paths = docker("run", "--rm", "--entrypoint", "sh", IMAGE, "-c", "command -v train; command -v serve",
                   check=True).stdout.split()
    assert paths == ["/opt/program/train", "/opt/program/serve"]
    result = docker("run", "--rm", IMAGE, "info", check=True)
    info = json.loads(result.stdout)
    assert info["image_variant"] == "cpu" and info["mxnet"]["distribution"] == "mxnet", info
    assert info["horovod"]["gloo"] and not info["horovod"]["nccl"], info
    assert "libcuda" not in result.stderr  # the CPU image has no CUDA stub to choose
    # `train` on PATH is the entry point's train: without a job it fails with its reason.
    result = docker("run", "--rm", "--entrypoint", "train", IMAGE)
    assert result.returncode == 1 and "/opt/ml/input/config" in result.stderr, result.stderr[-2000:]


def test_quantize_export_onnx_and_evaluate_in_the_image(tmp_path: Path, data: Path):
    work = tmp_path / "work"
    shutil.copytree(data, work / "data")
    os.chmod(work, 0o777)
    script = ("set -e; ssd-detector init-model /w/fp32 --num-classes 3 --base-network mobilenet-0.25 --image-shape 64;"
              " ssd-detector quantize --model-dir /w/fp32 --calibration-data /w/data/validation --output /w/int8"
              " --num-calibration 4; ssd-detector export-onnx --model-dir /w/fp32 --output /w/model.onnx;"
              " ssd-detector evaluate /w/data/validation --model-dir /w/int8 --output /w/report > /w/eval.json")
    result = docker("run", "--rm", "-v", f"{work}:/w", "--entrypoint", "sh", IMAGE, "-c", script)
    assert result.returncode == 0, result.stderr[-3000:]
    quantized = json.loads((work / "int8/hyperparams.json").read_text())["quantization"]
    assert json.loads(quantized)["calibration_images"] == 4
    assert (work / "model.onnx").stat().st_size > 100_000
    report = json.loads((work / "eval.json").read_text())
    assert report["images"] == 4 and 0 <= report["voc07_map"] <= 1
    assert all(Path(p.replace("/w/", f"{work}/")).stat().st_size > 1000 for p in report["report"].values())
    assert "fontManager" not in result.stderr  # the font cache comes with the image


def test_bad_hyperparameters_exit_1_with_a_failure_file(tmp_path: Path, data: Path):
    base = opt_ml(tmp_path, data, {**HYPER, "mini_batch_size": "zero", "optimizer": "nag"})
    result = docker("run", "--rm", "--user", "4321:4321", "-v", f"{base}:/opt/ml", IMAGE, "train")
    assert result.returncode == 1, result.stderr[-2000:]
    failure = (base / "output/failure").read_text()
    assert "mini_batch_size='zero'" in failure and "optimizer='nag'" in failure


def test_no_command_trains_and_never_succeeds_without_a_job(tmp_path: Path, data: Path):
    """SageMaker (and SDK v3's local mode) start the training container with no command."""
    empty = tmp_path / "empty"
    empty.mkdir()
    os.chmod(empty, 0o777)
    result = docker("run", "--rm", "-v", f"{empty}:/opt/ml", IMAGE)
    assert result.returncode == 1, result.stderr[-2000:]
    assert "no training job configuration: /opt/ml/input/config does not exist" in (empty / "output/failure").read_text()
    base = opt_ml(tmp_path, data, HYPER)
    result = docker("run", "--rm", "-v", f"{base}:/opt/ml", IMAGE)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (base / "model/model_algo_1-symbol.json").exists()
    help_text = docker("run", "--rm", IMAGE, "--help")
    assert help_text.returncode == 0 and "serve" in help_text.stdout
    cap = docker("run", "--rm", "--entrypoint", "python", IMAGE, "-c",
                 "import os; from ssd_detector.data.images import MAX_PIXELS; "
                 "print(os.environ['OPENCV_IO_MAX_IMAGE_PIXELS'] == str(MAX_PIXELS))")
    assert cap.stdout.strip() == "True", cap.stderr[-1000:]


def test_docker_stop_while_waiting_for_the_job_to_form(tmp_path: Path, data: Path):
    """PID 1 stops on SIGTERM in every phase: here while waiting for a host that never comes up."""
    base = opt_ml(tmp_path, data, HYPER, {"current_host": "algo-2", "hosts": ["algo-1", "algo-2"],
                                          "network_interface_name": "eth0"})
    container = name("stop")
    docker("run", "-d", "--name", container, "-v", f"{base}:/opt/ml", IMAGE, "train", check=True)
    try:
        deadline = time.monotonic() + 60
        while "resolving the hosts" not in docker("logs", container).stderr:
            assert time.monotonic() < deadline, docker("logs", container).stderr[-2000:]
            time.sleep(0.5)
        start = time.monotonic()
        docker("stop", "-t", "30", container, check=True)
        assert time.monotonic() - start < 10, "stopped by SIGTERM, not by docker's SIGKILL"
        state = json.loads(docker("inspect", container, check=True).stdout)[0]["State"]
        assert state["ExitCode"] == 0, docker("logs", container).stderr[-2000:]
    finally:
        docker("rm", "-f", container)


def test_serve_answers_and_stops_within_30_seconds(tmp_path: Path, data: Path):
    base = opt_ml(tmp_path, data, HYPER)
    result = docker("run", "--rm", "-v", f"{base}:/opt/ml", IMAGE, "train")
    assert result.returncode == 0, result.stderr[-3000:]
    port, container = free_port(), name("serve")
    docker("run", "-d", "--name", container, "-p", f"127.0.0.1:{port}:8080", "-e", "SAGEMAKER_MODEL_SERVER_WORKERS=2",
           "-v", f"{base / 'model'}:/opt/ml/model:ro", IMAGE, "serve", check=True)
    try:
        wait_for_ping(port, lambda: docker("logs", container).stderr[-3000:])
        image = make_image(__import__("numpy").random.default_rng(1), SynthSpec(1, 0, 3))[0]
        status, body = request(port, "POST", "/invocations", encode(image, "jpeg"), {"Content-Type": "image/jpeg"})
        assert status == 200, body
        rows = json.loads(body)["prediction"]
        assert rows and all(len(r) == 6 for r in rows)
        status, body = request(port, "POST", "/invocations", b"a,b", {"Content-Type": "text/csv"})
        assert status == 415 and json.loads(body)["error"] == "unsupported_media_type"
        start = time.monotonic()
        docker("stop", "-t", "30", container, check=True)
        assert time.monotonic() - start < 30
        state = docker("inspect", "-f", "{{.State.ExitCode}}", container, check=True).stdout.strip()
        assert state == "0", docker("logs", container).stderr[-3000:]
    finally:
        docker("rm", "-f", container)


def test_serve_behind_nginx_beside_slow_clients_and_a_dead_nginx(tmp_path: Path):
    """The container's serve: nginx in front, the slow-client check of the stack's tests through
    Docker's port, no zombie under PID 1, and a killed nginx ends the container naming it."""
    from ssd_detector.model.untrained import export_untrained
    from slow_clients import answered_beside_slow_clients

    model = export_untrained(tmp_path / "model", {"num_classes": "3", "base_network": "mobilenet-0.25",
                                                  "image_shape": "128"})
    os.chmod(tmp_path / "model", 0o755)
    port, container = free_port(), name("serve-nginx")
    docker("run", "-d", "--name", container, "-p", f"127.0.0.1:{port}:8080", "-e", "SAGEMAKER_MODEL_SERVER_WORKERS=2",
           "-v", f"{model}:/opt/ml/model:ro", IMAGE, "serve", check=True)
    try:
        wait_for_ping(port, lambda: docker("logs", container).stderr[-3000:])
        jpeg = encode(make_image(__import__("numpy").random.default_rng(1), SynthSpec(1, 0, 3))[0], "jpeg")
        rounds = answered_beside_slow_clients(
            port, lambda: request(port, "POST", "/invocations", jpeg, {"Content-Type": "image/jpeg"})[0])
        for pinged, ping_s, invoked, invoke_s in rounds:
            assert (pinged, invoked) == (200, 200)
            assert ping_s < 5 and invoke_s < 5, rounds
        states = docker("exec", container, "sh", "-c", "cat /proc/[0-9]*/stat", check=True).stdout
        names = [line.split("(", 1)[1].split(")", 1)[0] for line in states.splitlines()]
        assert "nginx" in names and not [line for line in states.splitlines() if ") Z " in line], states
        logs = docker("logs", container)
        assert "listens on 0.0.0.0:8080 in front of gunicorn" in logs.stderr, logs.stderr[-3000:]
        assert '"POST /invocations HTTP/1.1" 408' in logs.stdout, "nginx's access log on the container's stdout"
        docker("exec", container, "sh", "-c", "kill -9 $(cat /tmp/ssd-serve-*/nginx/nginx.pid)", check=True)
        code = docker("wait", container, timeout=60, check=True).stdout.strip()
        logs = docker("logs", container).stderr
        assert code == "1", logs[-3000:]
        assert "serving stopped: nginx (pid" in logs and "was killed by signal 9 (SIGKILL)" in logs, logs[-3000:]
    finally:
        docker("rm", "-f", container)


def test_multi_model_endpoint_in_the_image(tmp_path: Path):
    """SageMaker's multi-model contract in the container: the label, /ping with no model, two
    different models loaded from /opt/ml/models (one as a model.tar.gz), invoked, listed, unloaded."""
    import tarfile

    from ssd_detector.model.untrained import export_untrained

    labels = json.loads(docker("inspect", "-f", "{{json .Config.Labels}}", IMAGE, check=True).stdout)
    assert labels.get("com.amazonaws.sagemaker.capabilities.multi-models") == "true"
    models = tmp_path / "models"
    for model_name, classes, size in (("a", 3, 128), ("b", 2, 96)):
        folder = export_untrained(models / model_name / "model", {
            "num_classes": str(classes), "base_network": "mobilenet-0.25", "image_shape": str(size)})
        if model_name == "b":  # as an archive in its folder
            with tarfile.open(tmp_path / "model.tar.gz", "w:gz") as tar:
                for f in folder.iterdir():
                    tar.add(f, arcname=f.name)
            shutil.rmtree(folder)
            folder.mkdir()
            shutil.move(str(tmp_path / "model.tar.gz"), folder / "model.tar.gz")
    for path in [models, *models.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    port, container = free_port(), name("mme")
    docker("run", "-d", "--name", container, "-p", f"127.0.0.1:{port}:8080", "-e", "SAGEMAKER_MULTI_MODEL=true",
           "-e", "SAGEMAKER_MODEL_SERVER_WORKERS=2", "-v", f"{models}:/opt/ml/models:ro", IMAGE, "serve", check=True)
    try:
        wait_for_ping(port, lambda: docker("logs", container).stderr[-3000:])
        jpeg = encode(make_image(__import__("numpy").random.default_rng(2), SynthSpec(1, 0, 3))[0], "jpeg")
        for model in ("a", "b"):
            body = json.dumps({"model_name": model, "url": f"/opt/ml/models/{model}/model"}).encode()
            status, answer = request(port, "POST", "/models", body, {"Content-Type": "application/json"})
            assert status == 200, answer
        classes = {}
        for model in ("a", "b") * 4:
            status, answer = request(port, "POST", f"/models/{model}/invoke", jpeg, {"Content-Type": "image/jpeg"})
            assert status == 200, answer
            classes.setdefault(model, set()).update(int(row[0]) for row in json.loads(answer)["prediction"])
        assert classes["a"] <= {0, 1, 2} and classes["b"] <= {0, 1}
        status, answer = request(port, "GET", "/models")
        assert [m["modelName"] for m in json.loads(answer)["models"]] == ["a", "b"]
        body = json.dumps({"model_name": "x", "url": "/etc"}).encode()
        assert request(port, "POST", "/models", body, {"Content-Type": "application/json"})[0] == 400
        assert request(port, "DELETE", "/models/a")[0] == 200
        assert request(port, "POST", "/models/a/invoke", jpeg, {"Content-Type": "image/jpeg"})[0] == 404
    finally:
        docker("rm", "-f", container)


def test_distributed_across_two_containers(tmp_path: Path, data: Path):
    network = name("net")
    hosts = ["algo-1", "algo-2"]
    bases = [opt_ml(tmp_path / h, data, {**HYPER, "epochs": "2"},
                    {"current_host": h, "hosts": hosts, "network_interface_name": "eth0"}) for h in hosts]
    docker("network", "create", network, check=True)
    containers = []
    try:
        for host, base in zip(hosts, bases):
            container = f"{host}-{network}"
            docker("run", "-d", "--name", container, "--hostname", host, "--network", network,
                   "--network-alias", host, "-e", "SSD_JOIN_TIMEOUT=120", "-v", f"{base}:/opt/ml", IMAGE, "train",
                   check=True)
            containers.append(container)
        codes = [int(docker("wait", c, timeout=600, check=True).stdout.strip()) for c in containers]
        logs = [docker("logs", c).stderr for c in containers]
        assert codes == [0, 0], "\n".join(log[-3000:] for log in logs)
        assert "2 host(s) x 1 worker(s)" in logs[0]
        assert (bases[0] / "model/model_algo_1-0000.params").is_file()
        assert not (bases[1] / "model").exists() or not any((bases[1] / "model").iterdir())
    finally:
        for container in containers:
            docker("rm", "-f", container)
        docker("network", "rm", network)


def test_local_runner_trains_packs_and_serves_the_archive(tmp_path: Path, data: Path):
    import signal
    import sys

    runner = Path(__file__).resolve().parents[2] / "scripts/local_run.py"
    hp = tmp_path / "hp.json"
    hp.write_text(json.dumps(HYPER))
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, str(runner), "train", "--image", IMAGE, "--hyperparameters", str(hp),
                             "--channel", f"train={data / 'train'}", "--channel", f"validation={data / 'validation'}",
                             "--output", str(out)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    with tarfile.open(out / "model.tar.gz") as tar:
        assert "model_algo_1-symbol.json" in tar.getnames()
    assert (out / "output.tar.gz").is_file() and not (out / "failure").exists()
    with tarfile.open(out / "output.tar.gz") as tar:
        assert {"report/metrics.csv", "report/curves.png", "report/validation/evaluation.json"} <= set(tar.getnames())
    assert (out / "report/curves.png").is_file()  # unpacked beside the model
    port = free_port()
    server = subprocess.Popen([sys.executable, str(runner), "serve", "--image", IMAGE, "--model",
                               str(out / "model.tar.gz"), "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_ping(port, lambda: f"local_run serve exit code {server.poll()}")
        image = make_image(__import__("numpy").random.default_rng(2), SynthSpec(1, 0, 3))[0]
        status, body = request(port, "POST", "/invocations", encode(image, "png"),
                               {"Content-Type": "image/png", "Accept": "application/json;annotation=1"})
        assert status == 200 and "annotations" in json.loads(body)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)


def test_local_runner_pipe_mode_with_a_manifest(tmp_path: Path):
    """A Pipe-mode job in the container: the runner writes the FIFOs on the host, as SageMaker does,
    from a Ground Truth manifest (train) and a RecordIO channel (validation)."""
    import sys

    generate(tmp_path / "data", SynthSpec(train=16, validation=4, classes=3, width=128, height=96, seed=5,
                                          format="both"))
    runner = Path(__file__).resolve().parents[2] / "scripts/local_run.py"
    hp = tmp_path / "hp.json"
    hp.write_text(json.dumps({**HYPER, "num_training_samples": "16"}))
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, str(runner), "train", "--image", IMAGE, "--hyperparameters", str(hp),
                             "--input-mode", "Pipe",
                             "--channel", f"train={tmp_path / 'data/manifest/train.manifest'}",
                             "--attribute-names", "train=source-ref,bounding-box",
                             "--channel", f"validation={tmp_path / 'data/recordio/validation'}",
                             "--output", str(out)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    config = json.loads((out / "algo-1/input/config/inputdataconfig.json").read_text())
    assert config["train"] == {"TrainingInputMode": "Pipe", "S3DistributionType": "FullyReplicated",
                               "RecordWrapperType": "RecordIO", "ContentType": "application/x-recordio"}
    assert "#quality_metric: host=algo-1, epoch=1, validation mAP" in result.stderr
    with tarfile.open(out / "model.tar.gz") as tar:
        assert "model_algo_1-0000.params" in tar.getnames()
    assert not (out / "failure").exists()
