"""Drift watch on an endpoint's captured data (issue #24 item 2).

    signals.py   the one definition of what is measured per image: its size, brightness, contrast and sharpness
                 (from the bytes the endpoint received) and the answer (predicted count, confidence)
    baseline.py  the baseline: those signals on the val split, written next to the model at the end of training
                 (drift_baseline.json), and read back from a file, a model directory, S3 or a model.tar.gz
    capture.py   SageMaker's data-capture JSONL (captureData.endpointInput/endpointOutput, BASE64 or JSON) from
                 S3 for a time window (DEST/ENDPOINT/VARIANT/yyyy/mm/dd/hh/*.jsonl) -> images and answers
    drift.py     the comparison, pure: PSI per numeric signal, a chi-square test on the predicted-count mix,
                 each with its threshold -> a verdict
    report.py    the verdict as JSON and as one HTML page with the plots
    check.py     the whole run (`bincounter sm monitor`, `IMAGE process monitor`): baseline + window, each image
                 measured as it is read (its bytes dropped) -> files, exit code (0 no drift, 1 drift, 3 too few
                 captured images to judge; in a Processing job 0, so only drift fails the job)

numpy + PIL (+ matplotlib for the page, boto3 for S3); never torch, except `baseline.write_baseline`, which
runs the trained model on the val split.
"""
