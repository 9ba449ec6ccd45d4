"""Temperature scaling, for networks that output logits and for those that end in Softmax."""
from __future__ import annotations

import torch
import torch.nn as nn

from graftkit.meta import META_ATTR
from graftkit.serve.calibration import calibration
from graftkit.serve.inference import MainOutput


def _overconfident(n=2000, k=5, seed=0):
    """Logits twice as sharp as the labels they were drawn from: the fitted temperature is about 2."""
    g = torch.Generator().manual_seed(seed)
    true_logits = torch.randn(n, k, generator=g) * 2
    labels = torch.multinomial(true_logits.softmax(1), 1, generator=g).squeeze(1)
    return true_logits * 2, labels


def test_temperature_of_logits_and_of_probabilities_is_the_same():
    logits, labels = _overconfident()
    on_logits = calibration(logits, labels)
    on_probs = calibration(logits.softmax(1), labels)  # a network that ends in Softmax
    assert on_logits["scores"] == "logits" and on_probs["scores"] == "probabilities"
    assert 1.7 < on_logits["temperature"] < 2.3
    assert abs(on_probs["temperature"] - on_logits["temperature"]) < 1e-3
    assert on_probs["ece_after"] < on_probs["ece_before"] / 2


def test_a_softmax_network_serves_tempered_probabilities_that_sum_to_one():
    logits, labels = _overconfident()
    fitted = calibration(logits.softmax(1), labels)
    net = nn.Sequential(nn.Identity(), nn.Softmax(1))
    setattr(net, META_ATTR, {"calibration": {"temperature": fitted["temperature"], "scores": fitted["scores"]}})
    out = MainOutput(net)(logits[:10])
    torch.testing.assert_close(out.sum(1), torch.ones(10))
    torch.testing.assert_close(out, (logits[:10] / fitted["temperature"]).softmax(1), atol=1e-5, rtol=1e-4)
    assert torch.equal(out.argmax(1), logits[:10].argmax(1))
