"""sm/validate.py: every request a dry run prints passes botocore's offline validation of the API's input shape."""

import pytest

from bincounter.sm import printing, validate


def test_a_valid_request_passes_and_a_misspelled_field_is_named():
    ok = {"PolicyName": "p", "ServiceNamespace": "sagemaker", "ResourceId": "endpoint/e/variant/AllTraffic",
          "ScalableDimension": "sagemaker:variant:DesiredInstanceCount"}
    assert validate.errors("PutScalingPolicy", ok) is None  # found in application-autoscaling by its name
    problem = validate.errors("PutScalingPolicy", {**ok, "PolicyNmae": "p"})
    assert "PolicyNmae" in problem


def test_print_request_refuses_a_request_botocore_rejects(capsys):
    with pytest.raises(validate.InvalidRequest, match="InstanceCount"):
        printing.print_request("CreateTrainingJob", {
            "TrainingJobName": "j", "RoleArn": "arn:aws:iam::123456789012:role/r",
            "AlgorithmSpecification": {"TrainingImage": "i", "TrainingInputMode": "File"},
            "OutputDataConfig": {"S3OutputPath": "s3://b/o"},
            "ResourceConfig": {"InstanceType": "ml.g5.xlarge", "InstanceCount": "2", "VolumeSizeInGB": 30},
            "StoppingCondition": {"MaxRuntimeInSeconds": 3600}})
    assert capsys.readouterr().out == ""  # nothing printed for a request that would fail at AWS
    with pytest.raises(validate.InvalidRequest, match="no operation"):
        validate.check("CreateTrainingJbo", {})
