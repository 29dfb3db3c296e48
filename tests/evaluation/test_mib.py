"""MIB's integrated metrics: CPR and CMD as trapezoids over the node fractions, and in sweeps."""

from __future__ import annotations

import math

import pytest

from evaluation import sweep
from evaluation.mib import MIB_FRACTIONS, integrated, mib_counts


def test_integrated_is_the_trapezoid_of_a_known_curve():
    x = [0.0, 0.1, 0.5, 1.0]
    f = [0.0, 0.6, 1.2, 1.0]
    cpr, cmd = integrated(x, f)
    # by hand: widths 0.1, 0.4, 0.5; mean heights (0 + .6)/2, (.6 + 1.2)/2, (1.2 + 1)/2
    assert cpr == pytest.approx(0.1 * 0.3 + 0.4 * 0.9 + 0.5 * 1.1)
    # |1 − f| = 1, .4, .2, 0: mean heights .7, .3, .1
    assert cmd == pytest.approx(0.1 * 0.7 + 0.4 * 0.3 + 0.5 * 0.1)


def test_a_circuit_faithful_at_every_size_has_cmd_zero():
    cpr, cmd = integrated(list(MIB_FRACTIONS), [1.0] * len(MIB_FRACTIONS))
    assert cpr == pytest.approx(1.0 - 0.001) and cmd == 0.0


def test_integrated_refuses_bad_curves_and_propagates_nan():
    with pytest.raises(ValueError, match="ascending"):
        integrated([0.5, 0.1], [0.0, 1.0])
    with pytest.raises(ValueError, match="equal count"):
        integrated([0.1, 0.5], [0.0])
    assert all(math.isnan(v) for v in integrated([0.1, 0.5], [math.nan, 1.0]))


def test_mib_counts_round_down_as_mib_does():
    assert mib_counts(3341) == [3, 6, 16, 33, 66, 167, 334, 668, 1670, 3341]
    assert MIB_FRACTIONS == (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


def test_sweep_cpr_and_cmd_integrate_faithfulness_at_mib_fractions(organism, test_set, relp):
    """The cpr / cmd columns equal the trapezoids, over MIB's fractions, of the faithfulness a
    node-count sweep at MIB's counts measures; one value per method, on every row."""
    total = sum(v.numel() for v in relp.sites.values())
    table = sweep(organism, relp, test_set, node_counts=[5, 50], progress=False)
    assert table["cpr"].nunique() == 1 and table["cmd"].nunique() == 1
    curve = sweep(organism, relp, test_set, node_counts=mib_counts(total), mib=False,
                  progress=False)
    assert curve["cpr"].isna().all()
    assert curve["n_nodes"].tolist() == mib_counts(total)
    cpr, cmd = integrated(list(MIB_FRACTIONS), curve["faithfulness"].tolist())
    assert table["cpr"][0] == pytest.approx(cpr, abs=1e-6)
    assert table["cmd"][0] == pytest.approx(cmd, abs=1e-6)
    assert curve["faithfulness"].iloc[-1] == pytest.approx(1.0, abs=1e-4)  # 100 %: the model
    assert 0 < cpr < 1.2 and cmd >= 0
