"""The SageMaker Python SDK's two majors, as `sagemaker_launch.py` drives them: v3 (`ModelTrainer`;
models and endpoints through `sagemaker.core.resources`) and v2 (`Estimator`, `Model.deploy`,
`MultiDataModel`). Each is imported only when used, in the environment the user installed it in."""
from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sagemaker_launch import Channel, LaunchSpec

CHECKPOINT_LOCAL_PATH = "/opt/ml/checkpoints"
ENDPOINT_VARIANT = "AllTraffic"


def _name(prefix: str) -> str:
    return f"{prefix}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"[:63]


class SdkV3:
    """SDK 3.x: ModelTrainer for training; Model, EndpointConfig and Endpoint from sagemaker.core."""

    def __init__(self, boto_session: Any) -> None:
        from sagemaker.core.helper.session_helper import Session

        self.boto_session = boto_session
        self.session = Session(boto_session=boto_session)

    def train(self, spec: LaunchSpec) -> str:
        from sagemaker.core.shapes import MetricDefinition
        from sagemaker.core.training.configs import (CheckpointConfig, Compute, Networking, OutputDataConfig,
                                                     StoppingCondition)
        from sagemaker.train import ModelTrainer

        trainer = ModelTrainer(
            training_image=spec.image_uri, role=spec.role, sagemaker_session=self.session,
            base_job_name=spec.base_job_name,
            compute=Compute(instance_type=spec.instance_type, instance_count=spec.instance_count,
                            volume_size_in_gb=spec.volume_size, enable_managed_spot_training=spec.spot or None),
            stopping_condition=StoppingCondition(max_runtime_in_seconds=spec.max_run,
                                                 max_wait_time_in_seconds=spec.max_wait),
            output_data_config=OutputDataConfig(s3_output_path=spec.output_path),
            checkpoint_config=(CheckpointConfig(s3_uri=spec.checkpoint_s3_uri, local_path=CHECKPOINT_LOCAL_PATH)
                               if spec.checkpoint_s3_uri else None),
            networking=Networking(enable_network_isolation=True) if spec.network_isolation else None,
            hyperparameters=dict(spec.hyperparameters), training_input_mode=spec.input_mode,
        ).with_metric_definitions([MetricDefinition(name=d["Name"], regex=d["Regex"])
                                   for d in spec.metric_definitions])
        inputs = [self._channel(c, spec.input_mode) for c in spec.channels]
        trainer.train(input_data_config=inputs, wait=True, logs=spec.logs)
        job = trainer._latest_training_job  # the SDK's own handle on the job it created
        job.refresh()
        if job.training_job_status != "Completed":
            raise RuntimeError(f"training job {job.training_job_name} ended {job.training_job_status}: "
                               f"{getattr(job, 'failure_reason', '')}")
        return job.model_artifacts.s3_model_artifacts

    @staticmethod
    def _channel(channel: Channel, input_mode: str) -> Any:
        """A plain S3 prefix as InputData; anything more (Pipe mode, a distribution, an augmented
        manifest) as the API's own Channel shape, which InputData cannot express."""
        from sagemaker.core.shapes import Channel as ChannelShape
        from sagemaker.core.shapes import DataSource, S3DataSource
        from sagemaker.core.training.configs import InputData

        if input_mode == "File" and not channel.is_manifest and channel.distribution == "FullyReplicated":
            return InputData(channel_name=channel.name, data_source=channel.s3_uri,
                             **({"content_type": channel.content_type} if channel.content_type else {}))
        source = S3DataSource(s3_data_type=channel.s3_data_type, s3_uri=channel.s3_uri,
                              s3_data_distribution_type=channel.distribution,
                              **({"attribute_names": list(channel.attribute_names)} if channel.is_manifest else {}))
        extra = {"record_wrapper_type": "RecordIO"} if channel.is_manifest else {}
        if channel.content_type:
            extra["content_type"] = channel.content_type
        return ChannelShape(channel_name=channel.name, data_source=DataSource(s3_data_source=source),
                            input_mode=input_mode, **extra)

    def deploy(self, spec: LaunchSpec, model_data: str) -> str:
        from sagemaker.core.resources import Endpoint, EndpointConfig, Model
        from sagemaker.core.shapes import ContainerDefinition, ProductionVariant

        name = _name(spec.base_job_name)
        region = self.boto_session.region_name
        mode = {"mode": "MultiModel"} if spec.multi_model_prefix else {}
        Model.create(model_name=name, execution_role_arn=spec.role,
                     primary_container=ContainerDefinition(image=spec.image_uri, model_data_url=model_data, **mode),
                     session=self.boto_session, region=region)
        EndpointConfig.create(endpoint_config_name=name, production_variants=[ProductionVariant(
            variant_name=ENDPOINT_VARIANT, model_name=name, initial_instance_count=1,
            instance_type=spec.endpoint_instance_type)], session=self.boto_session, region=region)
        endpoint = Endpoint.create(endpoint_name=name, endpoint_config_name=name, session=self.boto_session,
                                   region=region)
        endpoint.wait_for_status("InService")
        return name

    def predict(self, endpoint_name: str, body: bytes, target_model: str | None = None) -> Any:
        from sagemaker.core.resources import Endpoint

        endpoint = Endpoint.get(endpoint_name=endpoint_name, session=self.boto_session,
                                region=self.boto_session.region_name)
        target = {"target_model": target_model} if target_model else {}
        answer = endpoint.invoke(body=body, content_type="image/jpeg", accept="application/json", **target)
        return json.loads(answer.body.read())


class SdkV2:
    """SDK 2.x: Estimator for training; Model.deploy and Predictor for hosting."""

    def __init__(self, boto_session: Any) -> None:
        import sagemaker

        self.boto_session = boto_session
        self.session = sagemaker.session.Session(boto_session=boto_session)

    def estimator_arguments(self, spec: LaunchSpec) -> dict[str, Any]:
        return estimator_arguments(spec) | {"sagemaker_session": self.session}

    def train(self, spec: LaunchSpec) -> str:
        from sagemaker.estimator import Estimator
        from sagemaker.inputs import TrainingInput

        estimator = Estimator(**self.estimator_arguments(spec))
        estimator.fit({c.name: TrainingInput(**training_input_arguments(c, spec.input_mode)) for c in spec.channels},
                      wait=True, logs="All" if spec.logs else "None")
        return estimator.model_data

    def deploy(self, spec: LaunchSpec, model_data: str) -> str:
        from sagemaker.model import Model
        from sagemaker.multidatamodel import MultiDataModel
        from sagemaker.predictor import Predictor

        name = _name(spec.base_job_name)
        if spec.multi_model_prefix:
            model = MultiDataModel(name=name, model_data_prefix=model_data, image_uri=spec.image_uri, role=spec.role,
                                   sagemaker_session=self.session, predictor_cls=Predictor)
        else:
            model = Model(image_uri=spec.image_uri, model_data=model_data, role=spec.role, name=name,
                          sagemaker_session=self.session, predictor_cls=Predictor)
        predictor = model.deploy(initial_instance_count=1, instance_type=spec.endpoint_instance_type,
                                 endpoint_name=name)
        return predictor.endpoint_name

    def predict(self, endpoint_name: str, body: bytes, target_model: str | None = None) -> Any:
        from sagemaker.deserializers import JSONDeserializer
        from sagemaker.predictor import Predictor
        from sagemaker.serializers import IdentitySerializer

        predictor = Predictor(endpoint_name, sagemaker_session=self.session,
                              serializer=IdentitySerializer("image/jpeg"), deserializer=JSONDeserializer())
        return predictor.predict(body, target_model=target_model)


def estimator_arguments(spec: LaunchSpec) -> dict[str, Any]:
    """Keyword arguments of SDK v2's sagemaker.estimator.Estimator."""
    kwargs: dict[str, Any] = {
        "image_uri": spec.image_uri, "role": spec.role, "instance_count": spec.instance_count,
        "instance_type": spec.instance_type, "volume_size": spec.volume_size, "max_run": spec.max_run,
        "input_mode": spec.input_mode, "output_path": spec.output_path, "hyperparameters": dict(spec.hyperparameters),
        "metric_definitions": [dict(d) for d in spec.metric_definitions],
        "enable_network_isolation": spec.network_isolation,
        "base_job_name": spec.base_job_name,
        # SageMaker Debugger hooks and profiling need the smdebug library in the container; this
        # image has none (v3 sends neither).
        "debugger_hook_config": False,
        "disable_profiler": True,
    }
    if spec.checkpoint_s3_uri:
        kwargs.update(checkpoint_s3_uri=spec.checkpoint_s3_uri, checkpoint_local_path=CHECKPOINT_LOCAL_PATH)
    if spec.spot:
        kwargs.update(use_spot_instances=True, max_wait=spec.max_wait)
    return kwargs


def training_input_arguments(channel: Channel, input_mode: str = "File") -> dict[str, Any]:
    """Keyword arguments of SDK v2's sagemaker.inputs.TrainingInput."""
    out: dict[str, Any] = {"s3_data": channel.s3_uri, "distribution": channel.distribution, "input_mode": input_mode}
    if channel.content_type:
        out["content_type"] = channel.content_type
    if channel.is_manifest:
        out.update(s3_data_type="AugmentedManifestFile", attribute_names=list(channel.attribute_names),
                   record_wrapping="RecordIO")
    return out
