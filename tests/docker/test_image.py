"""What is (and is not) in the image."""

from __future__ import annotations

from ..helpers import docker


def _sh(image, script: str):
    return docker("run", "--rm", "--entrypoint", "sh", image, "-c", script, check=False)


def test_no_build_tools_or_ca_bundle_in_the_final_image(image):
    out = _sh(image, "command -v gcc; command -v cc; ls /tmp/certs /tmp/ca.pem 2>/dev/null; "
                     "ls /usr/include/python3.11 2>/dev/null; echo PIP_CERT=$PIP_CERT").stdout
    assert out.strip() == "PIP_CERT=", out


def test_runtime_pieces_are_there(image):
    proc = _sh(image, "java -version 2>&1 | head -1; for c in train multi-model-server tini; do command -v $c; done; "
                      "python -c 'import sagemaker_training, sagemaker_inference, timm, torch, bincounter; "
                      "print(torch.__version__, torch.version.cuda)'; pip check")
    out = proc.stdout
    assert proc.returncode == 0, proc.stderr
    assert 'version "17' in out and "/opt/venv/bin/train" in out and "/usr/bin/tini" in out
    assert "/opt/venv/bin/multi-model-server" in out
    assert "2.9.1" in out and "12.8" in out
    assert "No broken requirements" in out


def test_other_commands_are_executed_as_given(image):
    proc = docker("run", "--rm", image, "bincounter", "--version")
    assert proc.stdout.strip().startswith("bincounter ")


def test_history_does_not_carry_the_ca_bundle(image):
    hist = docker("history", "--no-trunc", image).stdout
    assert "extra-ca" not in hist and "/tmp/certs" not in hist and "/tmp/ca.pem" not in hist
