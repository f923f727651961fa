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


def test_values_outside_the_model_are_named_though_botocore_lets_them_pass():
    """botocore checks types, required fields and minimums only; the model's enum, max and pattern are ours."""
    req = {"TrainingJobName": "a b", "RoleArn": "arn:aws:iam::123456789012:role/r",
           "AlgorithmSpecification": {"TrainingImage": "i", "TrainingInputMode": "Bogus"},
           "OutputDataConfig": {"S3OutputPath": "s3://b/o"},
           "ResourceConfig": {"InstanceType": "ml.nope", "InstanceCount": 1, "VolumeSizeInGB": 30},
           "StoppingCondition": {"MaxRuntimeInSeconds": 3600},
           "HyperParameters": {"k" * 300: "v"}}
    problem = validate.errors("CreateTrainingJob", req)
    assert "TrainingJobName: 'a b' does not match the pattern" in problem
    assert "AlgorithmSpecification.TrainingInputMode: 'Bogus' is not one of Pipe, File, FastFile" in problem
    assert "ResourceConfig.InstanceType: 'ml.nope' is not one of" in problem
    assert "300 over the maximum of 256 characters" in problem  # a map key's length
    assert "RetryStrategy.MaximumRetryAttempts: 31 over the maximum of 30" in validate.errors(
        "CreateTrainingJob", {**req, "RetryStrategy": {"MaximumRetryAttempts": 31}})
    req.update(TrainingJobName="ok-name", AlgorithmSpecification={"TrainingImage": "i", "TrainingInputMode": "File"},
               ResourceConfig={"InstanceType": "ml.g5.xlarge", "InstanceCount": 1, "VolumeSizeInGB": 30},
               HyperParameters={"lr": "0.001"})
    assert validate.errors("CreateTrainingJob", req) is None
