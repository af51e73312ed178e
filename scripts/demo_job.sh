#!/usr/bin/env bash
# Lays out a SageMaker-style /opt/ml tree under $SAGEMAKER_BASE_DIR from the demo's synthetic
# image + JSON annotation channels (their "categories" name the classes), checks it as a training
# job would read it, trains a small model for a few minutes, and predicts on validation images
# with the boxes drawn and named, asks the served model, and evaluates the model on the validation
# set (a report of pictures). Usage: demo_job.sh DEMO_DIR
set -euo pipefail
demo=$1
base=${SAGEMAKER_BASE_DIR:?set SAGEMAKER_BASE_DIR}
rm -rf "$base/input"
# The job tree as SageMaker lays it out, written by the same function the tests and benchmarks use.
"$(dirname "$0")/../.venv/bin/python" - "$base" "$demo/data/json" <<'PY'
import sys
from pathlib import Path

from ssd_detector.sagemaker_env import write_job

base, data = Path(sys.argv[1]), Path(sys.argv[2])
file_mode = {"ContentType": "application/x-image", "TrainingInputMode": "File", "RecordWrapperType": "None"}
# base_network JSON-quoted, as SDK v3 sends strings
write_job(base, {"num_classes": "3", "base_network": '"mobilenet-0.25"', "image_shape": "256",
                 "mini_batch_size": "16", "epochs": "8", "optimizer": "adam", "learning_rate": "0.01",
                 "lr_scheduler_step": "7", "use_pretrained_model": "0", "augmentation": "light"},
          {name: data / name for name in ("train", "train_annotation", "validation", "validation_annotation")},
          input_data_config={name: file_mode for name in ("train", "train_annotation", "validation",
                                                          "validation_annotation")})
PY
cli="$(dirname "$0")/../.venv/bin/ssd-detector"
echo "== checking the job's inputs"
"$cli" check-job
echo "== training from scratch with light augmentation (metric lines as SageMaker's built-in algorithm prints them)"
rm -rf "$base/model" "$base/output"
"$cli" train
echo "== model files"
ls -l "$base/model"
echo "== predicting on 4 validation images; pictures with boxes in $demo/predictions"
"$cli" predict --model-dir "$base/model" --threshold 0.3 --draw "$demo/predictions" \
    --output "$demo/predictions.json" "$demo"/data/json/validation/validation_00000[0-3].jpg
cat "$demo/predictions.json"; echo
ls "$demo/predictions"
echo "== serving the model over HTTP (gunicorn on 127.0.0.1:${DEMO_PORT:-18080}) and asking it about one image"
"$cli" serve --model-dir "$base/model" --host 127.0.0.1 --port "${DEMO_PORT:-18080}" --workers 1 &
server=$!
trap 'kill -TERM $server 2>/dev/null; wait $server 2>/dev/null' EXIT
"$(dirname "$0")/../.venv/bin/python" - "$demo/data/json/validation/validation_000000.jpg" "${DEMO_PORT:-18080}" <<'PY'
import json, sys, time, urllib.request
image, port = sys.argv[1], sys.argv[2]
for _ in range(120):
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2)
        break
    except OSError:
        time.sleep(0.5)
request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=open(image, "rb").read(),
                                 headers={"Content-Type": "image/jpeg", "Accept": "application/json;annotation=1",
                                          "X-Amzn-SageMaker-Custom-Attributes": "threshold=0.3"})
print(json.dumps(json.load(urllib.request.urlopen(request, timeout=60)), indent=1))
PY
kill -TERM $server 2>/dev/null || true; wait $server 2>/dev/null || true; trap - EXIT
echo "== evaluating the model on the validation set: VOC07/VOC12/COCO mAP, per class and per size"
"$cli" evaluate "$demo/data/json/validation" --annotations "$demo/data/json/validation_annotation" \
    --model-dir "$base/model" --output "$demo/evaluation" --quiet > "$demo/evaluation.json"
"$(dirname "$0")/../.venv/bin/python" - "$demo/evaluation.json" <<'PY'
import json, sys
report = json.load(open(sys.argv[1]))
print(f"VOC07 mAP {report['voc07_map']:.3f}  VOC12 mAP {report['voc12_map']:.3f}  COCO AP@[.5:.95] {report['coco_map']:.3f}")
print("AP per class:", {name: round(c["voc07_ap"], 3) for name, c in report["per_class"].items() if c["voc07_ap"] is not None})
PY
echo "== the evaluation report (pictures): $demo/evaluation; the training report: $base/output/data/report"
ls "$demo/evaluation" "$base/output/data/report"
