"""Offline check of a request against AWS's own API model (botocore's service JSON and its ParamValidator):
every request a dry run prints goes through `check` first, so a misspelled field, a wrong type or a value out of
its documented range is our bug, found without an AWS account."""

from __future__ import annotations

import functools

# the services `sm` talks to, searched in this order for an operation's name
SERVICES = ("sagemaker", "application-autoscaling", "cloudwatch", "iam", "s3", "scheduler", "events")


class InvalidRequest(Exception):
    """A request botocore's validator rejects (a defect in bincounter, not a user mistake)."""


@functools.cache
def _model(service: str):
    import botocore.session

    return botocore.session.get_session().get_service_model(service)


def operation(api: str, service: str | None = None):
    """botocore's OperationModel for `api` (e.g. "CreateTrainingJob"), in `service` or the first of SERVICES."""
    for name in (service,) if service else SERVICES:
        if api in _model(name).operation_names:
            return _model(name).operation_model(api)
    raise InvalidRequest(f"{api} is no operation of {service or ', '.join(SERVICES)}")


def errors(api: str, request: dict, service: str | None = None) -> str | None:
    """botocore's report of what is wrong with `request`, None when it is valid."""
    from botocore.validate import ParamValidator

    report = ParamValidator().validate(request, operation(api, service).input_shape)
    return report.generate_report() if report.has_errors() else None


def check(api: str, request: dict, service: str | None = None) -> None:
    """Raise InvalidRequest when `request` does not pass botocore's validation of `api`'s input shape."""
    if (problem := errors(api, request, service)) is not None:
        raise InvalidRequest(f"{api} request fails botocore's validation: {problem}")
