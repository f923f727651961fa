"""The pipeline's steps that the cloud pipeline (`sm pipeline upsert`, pipeline.py) and the local one
(`sm pipeline local`, pipeline_local.py) share, built on one pipeline session: Prepare (processing), the channels it
feeds, trainers and Train, Evaluate (processing) with its EvaluationReport property file, and the accuracy gate.
Every step runs our image.
"""

from __future__ import annotations

PROC = "/opt/ml/processing"
# A processing step's ContainerEntrypoint replaces the image's ENTRYPOINT, so it names tini first: tini stays
# PID 1 (StopPipelineExecution's SIGTERM reaches the job, zombies are reaped). (ContainerArguments alone would keep
# the image's ENTRYPOINT, but the SDK's local executor requires an entrypoint.)
ENTRYPOINT = ["/usr/bin/tini", "--", "/opt/bincounter/container/entrypoint.sh"]
SPLITS = ("train", "val", "test")
ACCURACY_PATH = "multiclass_classification_metrics.accuracy.value"


class Flow:
    """The steps the cloud pipeline (pipeline.build) and the local one (pipeline_local) share, on a pipeline session
    `ps` (PipelineSession, or the SDK's LocalPipelineSession): Prepare, the channels it feeds, trainers, Evaluate
    and the accuracy gate. `uri(*parts)`: where an execution writes (a per-execution Join)."""

    def __init__(self, ps, *, image: str, role: str, instance_type, processing_instance_type, uri,
                 max_runtime_s: int):
        self.ps, self.image, self.role, self.uri = ps, image, role, uri
        self.instance_type, self.processing_instance_type = instance_type, processing_instance_type
        self.max_runtime_s = max_runtime_s
        self.prepare = None

    def processor(self, action: str):
        from sagemaker.core.processing import Processor

        return Processor(role=self.role, image_uri=self.image, instance_count=1,
                         instance_type=self.processing_instance_type, volume_size_in_gb=100,
                         entrypoint=[*ENTRYPOINT, "process", action],
                         base_job_name=f"bincounter-{action}", sagemaker_session=self.ps)

    @staticmethod
    def p_in(input_name, source, dest):
        from sagemaker.core.shapes import ProcessingInput, ProcessingS3Input

        return ProcessingInput(input_name=input_name, s3_input=ProcessingS3Input(
            s3_uri=source, local_path=dest, s3_data_type="S3Prefix", s3_input_mode="File",
            s3_data_distribution_type="FullyReplicated"))

    @staticmethod
    def p_out(output_name, local, dest):
        from sagemaker.core.shapes import ProcessingOutput, ProcessingS3Output

        return ProcessingOutput(output_name=output_name, s3_output=ProcessingS3Output(
            s3_uri=dest, local_path=local, s3_upload_mode="EndOfJob"))

    def prepare_step(self, raw):
        from sagemaker.mlops.workflow.steps import ProcessingStep

        outputs = [self.p_out(s, f"{PROC}/output/channels/{s}", self.uri("prepare", s)) for s in SPLITS]
        outputs.append(self.p_out("eda", f"{PROC}/output/eda", self.uri("prepare", "eda")))
        self.prepare = ProcessingStep(name="Prepare", step_args=self.processor("prepare").run(
            inputs=[self.p_in("raw", raw, f"{PROC}/input/raw")], outputs=outputs))
        return self.prepare

    def split_uri(self, split):
        return self.prepare.properties.ProcessingOutputConfig.Outputs[split].S3Output.S3Uri

    def channels(self, *names):
        from sagemaker.train.configs import Channel, DataSource, S3DataSource

        return [Channel(channel_name=n, input_mode="File", data_source=DataSource(s3_data_source=S3DataSource(
            s3_data_type="S3Prefix", s3_uri=self.split_uri(n), s3_data_distribution_type="FullyReplicated")))
            for n in names]

    def trainer(self, count, hps, out, base):
        from . import sdk

        return sdk.model_trainer(self.ps, image=self.image, role=self.role, instance_type=self.instance_type,
                                 instance_count=count, hyperparameters=hps, output_path=out, spot=False,
                                 checkpoint_s3=None, max_runtime_s=self.max_runtime_s, base_name=base)

    def train_step(self, count, hps, pretrained: str | None = None):
        """`pretrained`: a URI (file:// locally) of a `bincounter weights fetch` folder, the job's pretrained
        channel."""
        from sagemaker.mlops.workflow.steps import TrainingStep
        from sagemaker.train.configs import Channel, DataSource, S3DataSource

        chans = self.channels("train", "val")
        if pretrained:
            chans.append(Channel(channel_name="pretrained", input_mode="File", data_source=DataSource(
                s3_data_source=S3DataSource(s3_data_type="S3Prefix", s3_uri=pretrained,
                                            s3_data_distribution_type="FullyReplicated"))))
        return TrainingStep(name="Train", step_args=self.trainer(count, hps, self.uri("train"), "bincounter").train(
            input_data_config=chans))

    def evaluate_step(self, model_data, arguments: list[str] | None = None):
        """-> (the Evaluate step, its EvaluationReport property file)."""
        from sagemaker.core.workflow.properties import PropertyFile
        from sagemaker.mlops.workflow.steps import ProcessingStep

        report = PropertyFile(name="EvaluationReport", output_name="evaluation", path="evaluation.json")
        evaluate = ProcessingStep(name="Evaluate", property_files=[report], step_args=self.processor("evaluate").run(
            inputs=[self.p_in("model", model_data, f"{PROC}/model"),
                    self.p_in("test", self.split_uri("test"), f"{PROC}/test")],
            outputs=[self.p_out("evaluation", f"{PROC}/evaluation", self.uri("evaluate"))],
            arguments=arguments))
        return evaluate, report

    @staticmethod
    def gate(evaluate, report, min_accuracy, if_steps, not_done: str):
        """CheckAccuracy: accuracy >= min_accuracy ? if_steps : AccuracyTooLow (a Fail step saying `not_done`)."""
        from sagemaker.core.workflow.conditions import ConditionGreaterThanOrEqualTo
        from sagemaker.core.workflow.functions import Join, JsonGet
        from sagemaker.mlops.workflow.condition_step import ConditionStep
        from sagemaker.mlops.workflow.fail_step import FailStep

        accuracy = JsonGet(step_name=evaluate.name, property_file=report, json_path=ACCURACY_PATH)
        fail = FailStep(name="AccuracyTooLow", error_message=Join(on=" ", values=[
            "test accuracy", accuracy, "is below MinAccuracy", min_accuracy, f"- {not_done}"]))
        return ConditionStep(name="CheckAccuracy", conditions=[ConditionGreaterThanOrEqualTo(left=accuracy,
                                                                                             right=min_accuracy)],
                             if_steps=if_steps, else_steps=[fail])
