"""The SageMaker client: what runs on the user's machine (`bincounter sm ...`).

Job specs in, SageMaker API calls (through the SDK v3 or boto3) out. It never runs inside the image; the image's
side of the SageMaker contract is `bincounter.sagemaker`, and the two share only `bincounter.sagemaker.contract`
(its constants and the hyperparameter-string functions).

One module per job kind, each taking a spec (`specs`) and an `AwsTarget` (`target`: region, profile, endpoint
URL, dry run): `training`, `tuning`, `endpoint` (deploy, predict, evaluate), `batch`, `delete`, `follow`
(status, logs, wait), `job_report`, `batch_collect`, `pipeline`. Shared pieces below them: `sdk` (the SDK session
and the dry run), `sdk_compat` (every SDK shim), `checks`, `channels`, `hyperparameters`, `cost`, `jobs` (names,
requests), `printing`.
"""
