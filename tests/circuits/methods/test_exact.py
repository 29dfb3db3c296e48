"""Exact patching against one forward per node, and candidates."""

from __future__ import annotations

import pytest
import torch

from saes import SplicedModel
from tasks import logit_diff
from tasks.pairs import Dataset
from tests.circuits.conftest import scores, spliced_nodes


@pytest.mark.parametrize("blocks", ["parallel", "sequential"])
def test_exact_equals_one_forward_per_node(blocks, tiny, sequential, data: Dataset):
    """Reference: for every moved node, a copy of the clean prompt run through the spliced
    model with that one node edited to its patch-run value (copies stacked in one batch)."""
    tiny = tiny if blocks == "parallel" else sequential
    example = data.subset([0])
    got = scores(tiny, example, "exact", exact_batch=37)  # odd chunks on purpose
    clean = spliced_nodes(tiny, example.clean_tokens)
    patch = spliced_nodes(tiny, example.patch_tokens)
    base = logit_diff(tiny.logits(example.clean_tokens), example)[0]
    for name in ("embed", "attn_0", "mlp_0", "resid_1"):
        d_sae = tiny.dictionaries[name].d_sae
        moved = (patch[name].features != clean[name].features)[0]  # [pos, d_sae]
        moved = torch.cat([moved, torch.ones(example.seq_len, 1, dtype=torch.bool)], -1)
        pos, node = moved.nonzero().unbind(-1)  # [N]
        rows = torch.arange(len(pos))

        def edit(site, f, err, name=name, pos=pos, node=node, rows=rows, d_sae=d_sae):
            if site.name != name:
                return f, err
            f, err = f.clone(), err.clone()
            is_err = node == d_sae
            err[rows[is_err], pos[is_err]] = patch[name].error[0, pos[is_err]]
            r, p, i = rows[~is_err], pos[~is_err], node[~is_err]
            f[r, p, i] = patch[name].features[0, p, i]
            return f, err

        copies = example.subset(torch.zeros(len(pos), dtype=torch.long))
        with torch.no_grad():
            logits = tiny.logits(copies.clean_tokens, edit=edit)
        expected = torch.zeros(example.seq_len, d_sae + 1)
        expected[pos, node] = logit_diff(logits, copies) - base
        assert expected.abs().max() > 1e-3, name
        torch.testing.assert_close(got[name][0], expected, atol=5e-5, rtol=1e-4)


def test_exact_candidates_patch_only_those_nodes(tiny: SplicedModel, data: Dataset):
    full = scores(tiny, data, "exact")
    mask = torch.zeros(65, dtype=torch.bool)
    mask[torch.arange(0, 65, 3)] = True
    some = scores(tiny, data, "exact", candidates={"mlp_0": mask, "resid_1": torch.tensor([64])})
    torch.testing.assert_close(some["mlp_0"], full["mlp_0"] * mask, atol=1e-6, rtol=0)
    torch.testing.assert_close(some["resid_1"][..., 64], full["resid_1"][..., 64], atol=1e-6,
                               rtol=0)
    assert some["resid_1"][..., :64].abs().max() == 0 and some["embed"].abs().max() == 0
