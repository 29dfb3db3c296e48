"""The one forward metric: it equals the logit difference on full logits."""

from __future__ import annotations

import torch

from circuits.forward import Targets, forward
from saes import SplicedModel
from tasks import logit_diff
from tasks.pairs import Dataset


def test_metric_equals_logit_diff_on_full_logits(tiny: SplicedModel, data: Dataset):
    value, _ = forward(tiny, data.clean_tokens, Targets.of(data))
    expected = logit_diff(tiny.logits(data.clean_tokens, spliced=False), data)
    torch.testing.assert_close(value, expected, atol=1e-5, rtol=1e-5)
