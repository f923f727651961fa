"""The SageMaker client: what runs on the user's machine (`bincounter sm ...`).

Job specs in, SageMaker API calls (through the SDK v3 or boto3) out. It never runs inside the image; the image's
side of the SageMaker contract is `bincounter.sagemaker`, and the two share only `bincounter.sagemaker.contract`'s
constants.
"""
