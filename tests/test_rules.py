"""Each training rule fires on the numbers it is about, and stays quiet otherwise (the trainer-level runs are in
test_train.py: a bad init, a diverging lr, an empty count, a healthy run)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from bincounter import rules as R
from bincounter.distributed import DistInfo


def _rules(tmp_path, world_size=1, **kw):
    return R.Rules(DistInfo(world_size=world_size), tmp_path, lr=1e-3, **kw)


def _steps(r, norms, loss=1.6, scaled=False):
    logits = torch.zeros(4, 5)
    for i, n in enumerate(norms):
        r.step(1, i, torch.tensor(loss), torch.tensor(n), logits, scaled=scaled)


def _row(e, tl, vl):
    return {"epoch": e, "train_loss": tl, "val_loss": vl}


def test_exploding_gradients(tmp_path):
    r = _rules(tmp_path)
    _steps(r, [1.0] * R.NORM_STEPS + [2.0, 3.0])
    assert r.count == 0
    _steps(r, [R.EXPLODE_FACTOR * 1.5])
    assert [f["rule"] for f in r.fired] == ["exploding_gradients"]
    assert json.loads((tmp_path / R.RULES_FILE).read_text())["fired"][0]["evidence"]["median_first_steps"] == 1.0


def test_vanishing_gradients(tmp_path):
    r = _rules(tmp_path)
    _steps(r, [1.0] * 5 + [1e-9] * (R.VANISH_STEPS - 1))
    assert r.count == 0
    _steps(r, [1e-9])
    assert [f["rule"] for f in r.fired] == ["vanishing_gradients"]


def test_a_nan_gradient_stops_at_once_and_fp16_overflows_only_when_they_persist(tmp_path):
    with pytest.raises(R.TrainingStopped, match="gradient norm is nan"):
        _steps(_rules(tmp_path), [1.0, float("nan")])
    r = _rules(tmp_path)  # fp16 loss scaling: the scaler skips an overflowing step by design
    _steps(r, [1.0] + [float("inf")] * (R.NONFINITE_STEPS - 1), scaled=True)
    with pytest.raises(R.TrainingStopped, match="rule nonfinite"):
        _steps(r, [float("inf")], scaled=True)


def test_with_several_ranks_a_nan_loss_alone_does_not_stop_one_rank(tmp_path):
    """Only the gradient norm (identical on every rank after DDP's all-reduce) may stop a distributed run, so
    that all ranks stop at the same step; one rank's NaN loss makes that norm NaN everywhere."""
    r = _rules(tmp_path, world_size=2)
    r._first_losses = [1.6] * R.INIT_STEPS  # past the init check (its all-reduce needs a process group)
    r.step(1, 0, torch.tensor(float("nan")), torch.tensor(1.0), torch.zeros(2, 5), scaled=False)
    assert r.count == 0
    with pytest.raises(R.TrainingStopped):
        r.step(1, 1, torch.tensor(float("nan")), torch.tensor(float("nan")), torch.zeros(2, 5), scaled=False)
    with pytest.raises(R.TrainingStopped):  # one process: its own loss decides
        _rules(tmp_path).step(1, 0, torch.tensor(float("inf")), torch.tensor(1.0), torch.zeros(2, 5), scaled=False)


def test_poor_initialisation_from_the_first_losses_or_the_logit_spread(tmp_path):
    r = _rules(tmp_path)
    _steps(r, [1.0] * R.INIT_STEPS, loss=math.log(5))
    assert r.count == 0
    r = _rules(tmp_path)
    _steps(r, [1.0] * R.INIT_STEPS, loss=4.46)  # the seed's first-epoch loss with timm's own head init
    assert r.fired[0]["rule"] == "poor_initialization" and r.fired[0]["step"] == R.INIT_STEPS - 1


def test_loss_not_decreasing_only_while_the_lr_is_still_high(tmp_path):
    flat = [_row(1, 1.0, 1.0), _row(2, 0.999, 1.0), _row(3, 0.998, 1.0)]
    late = _rules(tmp_path)
    late.epoch_end(3, flat, 0.0, lr_fraction=0.1)  # the end of a cosine schedule may flatten
    assert late.count == 0
    r = _rules(tmp_path)
    r.epoch_end(2, flat[:2], 0.0)
    assert r.count == 0
    r.epoch_end(3, flat, 0.0)
    assert [f["rule"] for f in r.fired] == ["loss_not_decreasing"]
    r2 = _rules(tmp_path)
    r2.epoch_end(3, [_row(1, 1.0, 1.0), _row(2, 0.9, 1.0), _row(3, 0.8, 1.0)], 0.0)
    assert r2.count == 0


def test_overfitting(tmp_path):
    r = _rules(tmp_path)
    r.epoch_end(3, [_row(1, 1.0, 0.9), _row(2, 0.8, 1.0), _row(3, 0.6, 0.95)], 0.0)
    assert r.count == 0  # val loss fell in between
    r.epoch_end(3, [_row(1, 1.0, 0.9), _row(2, 0.8, 1.0), _row(3, 0.6, 1.1)], 0.0)
    assert [f["rule"] for f in r.fired] == ["overfitting"]


def test_input_bound_from_the_second_epoch(tmp_path):
    r = _rules(tmp_path)
    r.epoch_end(1, [_row(1, 1.0, 1.0)], 0.9)  # epoch 1 includes worker start-up
    assert r.count == 0
    r.epoch_end(2, [_row(1, 1.0, 1.0), _row(2, 0.5, 0.5)], R.INPUT_WAIT_SHARE)
    assert [f["rule"] for f in r.fired] == ["input_bound"]


def test_counts_never_predicted_or_collapsed(tmp_path):
    import numpy as np

    cm = np.eye(5, dtype=int) * 4
    r = _rules(tmp_path)
    r.train_end(3, cm)
    assert r.count == 0
    cm[3] = [0, 0, 4, 0, 0]  # every 4 answered as 3: count 4 is never answered
    r.train_end(3, cm)
    assert r.fired[0]["rule"] == "never_predicted" and r.fired[0]["evidence"]["counts"] == [4]
    r = _rules(tmp_path)
    r.train_end(3, np.array([[4, 0, 0, 0, 0]] * 5))
    assert {f["rule"] for f in r.fired} == {"collapsed", "never_predicted"}


def test_each_rule_fires_once_and_the_state_survives_a_checkpoint(tmp_path):
    r = _rules(tmp_path)
    r.epoch_end(2, [_row(1, 1.0, 1.0), _row(2, 0.5, 0.5)], 0.5)
    r.epoch_end(3, [_row(1, 1.0, 1.0), _row(2, 0.5, 0.5), _row(3, 0.4, 0.4)], 0.5)
    assert r.count == 1
    state = r.state_dict()
    torch.save(state, tmp_path / "ck.pt")
    back = _rules(tmp_path)
    back.load_state_dict(torch.load(tmp_path / "ck.pt", weights_only=True))
    assert back.fired == r.fired and back.count == 1
    back.epoch_end(4, [_row(e, 1.0 / e, 1.0 / e) for e in (1, 2, 3, 4)], 0.5)  # input_bound again: already reported
    assert back.count == 1
