"""The pipeline's steps that the cloud pipeline (`sm pipeline upsert`, pipeline.py) and the local one
(`sm pipeline local`, pipeline_local.py) share, built on one pipeline session: the sharded Prepare (Prepare: the
metadata-only plan on 1 instance -> Shard: N instances, each its manifest parts (ShardedByS3Key) -> Index: the
index parts combined), the channels it feeds, trainers and Train, Evaluate with its EvaluationReport property
file, and the accuracy gate. Every step runs our image.
"""

from __future__ import annotations

PROC = "/opt/ml/processing"
# A processing step's ContainerEntrypoint replaces the image's ENTRYPOINT, so it names tini first: tini stays
# PID 1 (StopPipelineExecution's SIGTERM reaches the job, zombies are reaped). (ContainerArguments alone would keep
# the image's ENTRYPOINT, but the SDK's local executor requires an entrypoint.)
ENTRYPOINT = ["/usr/bin/tini", "--", "/opt/bincounter/container/entrypoint.sh"]
SPLITS = ("train", "val", "test")
ACCURACY_PATH = "multiclass_classification_metrics.accuracy.value"
DATA_STEPS = ("Prepare", "Shard", "Index")
#: each processing step's MaxRuntimeInSeconds: the bound the cost line multiplies (ABID in full: Prepare reads 535k
#: metadata files, each Shard instance fetches and packs its slice, see the README's cost table)
PROCESSING_MAX_RUNTIME_S = {"plan": 2 * 3600, "shard": 6 * 3600, "index": 3600, "evaluate": 2 * 3600}


class Flow:
    """The steps the cloud pipeline (pipeline.build) and the local one (pipeline_local) share, on a pipeline session
    `ps` (PipelineSession, or the SDK's LocalPipelineSession). `uri(*parts)`: where an execution writes (a
    per-execution Join); `data_uri(*parts)`: where the data steps write (the cloud keys it by DataVersion, not by
    execution, so a cached data step's outputs stay where later steps look). `step_options(name)`: extra keyword
    arguments per step (cache_config, retry_policies)."""

    def __init__(self, ps, *, image: str, role: str, instance_type, processing_instance_type, uri,
                 max_runtime_s: int, data_uri=None, step_options=None):
        self.ps, self.image, self.role, self.uri = ps, image, role, uri
        self.data_uri = data_uri or uri
        self.instance_type, self.processing_instance_type = instance_type, processing_instance_type
        self.max_runtime_s = max_runtime_s
        self.options = step_options or (lambda name: {})
        self.prepare = self.shard = self.index = None

    def processor(self, action: str, count=1):
        from sagemaker.core.processing import Processor

        return Processor(role=self.role, image_uri=self.image, instance_count=count,
                         instance_type=self.processing_instance_type, volume_size_in_gb=100,
                         max_runtime_in_seconds=PROCESSING_MAX_RUNTIME_S[action],
                         entrypoint=[*ENTRYPOINT, "process", action],
                         base_job_name=f"bincounter-{action}", sagemaker_session=self.ps)

    @staticmethod
    def p_in(input_name, source, dest, distribution="FullyReplicated"):
        from sagemaker.core.shapes import ProcessingInput, ProcessingS3Input

        return ProcessingInput(input_name=input_name, s3_input=ProcessingS3Input(
            s3_uri=source, local_path=dest, s3_data_type="S3Prefix", s3_input_mode="File",
            s3_data_distribution_type=distribution))

    @staticmethod
    def p_out(output_name, local, dest):
        from sagemaker.core.shapes import ProcessingOutput, ProcessingS3Output

        return ProcessingOutput(output_name=output_name, s3_output=ProcessingS3Output(
            s3_uri=dest, local_path=local, s3_upload_mode="EndOfJob"))

    def _step(self, name, step_args, **kw):
        from sagemaker.mlops.workflow.steps import ProcessingStep

        return ProcessingStep(name=name, step_args=step_args, **kw, **self.options(name))

    @staticmethod
    def out_uri(step, output):
        return step.properties.ProcessingOutputConfig.Outputs[output].S3Output.S3Uri

    def prepare_step(self, metadata, part_size: int | None = None):
        """Prepare: EDA + stratified split from `metadata` (the raw data's metadata/ prefix) alone -> the manifest
        (an output of the pipeline), its parts (`part_size` bins each; default: the image's), the EDA report."""
        outputs = [self.p_out(o, f"{PROC}/output/{o}", self.data_uri("prepare", o))
                   for o in ("manifest", "parts", "eda")]
        self.prepare = self._step("Prepare", self.processor("plan").run(
            inputs=[self.p_in("metadata", metadata, f"{PROC}/input/raw/metadata")], outputs=outputs,
            arguments=["--part-size", str(part_size)] if part_size else None))
        return self.prepare

    def shard_step(self, instances, source, shard_size: str = "256MB", raw=None):
        """Shard: `instances` processing instances, each given its manifest parts (ShardedByS3Key), fetching its
        bins from `source` (the raw data's S3 URI; or, with `raw` (a URI mounted as an input), the mounted folder)
        -> shards/<split>/*.tar + index parts. With `raw` (local mode, whose executor mounts every input whole on
        every instance) each instance takes its own slice of the parts by host (--slice-by-host)."""
        # local mode refuses ShardedByS3Key: every instance gets every part there and takes its share by host
        spread = "ShardedByS3Key" if raw is None else "FullyReplicated"
        inputs = [self.p_in("parts", self.out_uri(self.prepare, "parts"), f"{PROC}/input/parts", spread),
                  # plan's parts.json on every instance: part files an earlier plan of the DataVersion left are skipped
                  self.p_in("manifest", self.out_uri(self.prepare, "manifest"), f"{PROC}/input/manifest")]
        if raw is not None:
            inputs.append(self.p_in("raw", raw, f"{PROC}/input/raw"))
            source = f"{PROC}/input/raw"
        by_host = ["--slice-by-host"] if raw is not None else []
        self.shard = self._step("Shard", self.processor("shard", instances).run(
            inputs=inputs, arguments=["--source", source, "--shard-size", shard_size, "--manifest",
                                      f"{PROC}/input/manifest", *by_host],
            outputs=[self.p_out("shards", f"{PROC}/output/shards", self.data_uri("shards")),
                     self.p_out("index-parts", f"{PROC}/output/index-parts", self.data_uri("index-parts"))]))
        return self.shard

    def index_step(self):
        """Index: every instance's index parts -> <split>/index.json next to that split's shards + the summary
        (bad images summed over the instances)."""
        from sagemaker.core.workflow.functions import Join

        shards = self.out_uri(self.shard, "shards")
        outputs = [self.p_out(s, f"{PROC}/output/{s}", Join(on="/", values=[shards, s])) for s in SPLITS]
        outputs.append(self.p_out("summary", f"{PROC}/output/summary", self.data_uri("summary")))
        self.index = self._step("Index", self.processor("index").run(
            inputs=[self.p_in("index-parts", self.out_uri(self.shard, "index-parts"), f"{PROC}/input/index-parts"),
                    # plan's parts.json: Index combines only this manifest's parts (not stale ones of the DataVersion)
                    self.p_in("manifest", self.out_uri(self.prepare, "manifest"), f"{PROC}/input/manifest")],
            outputs=outputs))
        return self.index

    def data_steps(self, metadata, instances, source, shard_size: str = "256MB", raw=None,
                   part_size: int | None = None) -> list:
        return [self.prepare_step(metadata, part_size), self.shard_step(instances, source, shard_size, raw),
                self.index_step()]

    def split_uri(self, split):
        """A sharded split (index.json + shards), as the Index step wrote it."""
        return self.out_uri(self.index, split)

    def channels(self, *names, mode: str = "FastFile"):
        """Sharded channels: FastFile (SageMaker streams byte ranges of a few large objects as the trainer reads,
        nothing copied first), FullyReplicated (the trainer splits samples per rank itself)."""
        from sagemaker.train.configs import Channel, DataSource, S3DataSource

        return [Channel(channel_name=n, input_mode=mode, data_source=DataSource(s3_data_source=S3DataSource(
            s3_data_type="S3Prefix", s3_uri=self.split_uri(n), s3_data_distribution_type="FullyReplicated")))
            for n in names]

    @staticmethod
    def pretrained_channel(uri: str):
        """The ImageNet weights (a `bincounter weights fetch` folder) as the job's `pretrained` channel."""
        from sagemaker.train.configs import Channel, DataSource, S3DataSource

        return Channel(channel_name="pretrained", input_mode="File", data_source=DataSource(
            s3_data_source=S3DataSource(s3_data_type="S3Prefix", s3_uri=uri,
                                        s3_data_distribution_type="FullyReplicated")))

    def trainer(self, count, hps, out, base):
        from . import sdk

        return sdk.model_trainer(self.ps, image=self.image, role=self.role, instance_type=self.instance_type,
                                 instance_count=count, hyperparameters=hps, output_path=out, spot=False,
                                 checkpoint_s3=None, max_runtime_s=self.max_runtime_s, base_name=base,
                                 volume_gb=30, input_mode="FastFile")

    def train_step(self, count, hps, pretrained: str | None = None, mode: str = "FastFile", step_class=None):
        """`pretrained`: a URI (file:// locally) of a `bincounter weights fetch` folder, the job's pretrained
        channel. `step_class`: a TrainingStep subclass (the cloud's patches its request)."""
        from sagemaker.mlops.workflow.steps import TrainingStep

        chans = self.channels("train", "val", mode=mode)
        if pretrained:
            chans.append(self.pretrained_channel(pretrained))
        return (step_class or TrainingStep)(name="Train", step_args=self.trainer(
            count, hps, self.uri("train"), "bincounter").train(input_data_config=chans), **self.options("Train"))

    def evaluate_step(self, model_data, arguments: list[str] | None = None):
        """-> (the Evaluate step, its EvaluationReport property file)."""
        from sagemaker.core.workflow.properties import PropertyFile

        report = PropertyFile(name="EvaluationReport", output_name="evaluation", path="evaluation.json")
        evaluate = self._step("Evaluate", self.processor("evaluate").run(
            inputs=[self.p_in("model", model_data, f"{PROC}/model"),
                    self.p_in("test", self.split_uri("test"), f"{PROC}/test")],
            outputs=[self.p_out("evaluation", f"{PROC}/evaluation", self.uri("evaluate"))],
            arguments=arguments), property_files=[report])
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
