#!/usr/bin/env bash
# Lays out a SageMaker-style /opt/ml tree under $SAGEMAKER_BASE_DIR from the demo's synthetic
# RecordIO channels and checks it as a training job would read it. Usage: demo_job.sh DEMO_DIR
set -euo pipefail
demo=$1
base=${SAGEMAKER_BASE_DIR:?set SAGEMAKER_BASE_DIR}
mkdir -p "$base/input/config" "$base/input/data"
rm -rf "$base/input/data/train" "$base/input/data/validation"
cp -r "$demo/data/recordio/train" "$demo/data/recordio/validation" "$base/input/data/"
cat > "$base/input/config/hyperparameters.json" <<'JSON'
{"num_classes": "4", "base_network": "\"mobilenet-0.25\"", "image_shape": "256", "mini_batch_size": "16",
 "epochs": "10", "learning_rate": "0.01", "lr_scheduler_step": "6,8", "use_pretrained_model": "0"}
JSON
cat > "$base/input/config/inputdataconfig.json" <<'JSON'
{"train": {"ContentType": "application/x-recordio", "TrainingInputMode": "File", "RecordWrapperType": "None"},
 "validation": {"ContentType": "application/x-recordio", "TrainingInputMode": "File", "RecordWrapperType": "None"}}
JSON
"$(dirname "$0")/../.venv/bin/ssd-detector" check-job
