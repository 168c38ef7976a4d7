"""Interval estimates on inputs whose answers are known (textbook t table, hand arithmetic)."""

from __future__ import annotations

import math

import pytest

from glass_llm.intervals import mean_ci, paired_diff, paired_ratio, spread, t_quantile


@pytest.mark.parametrize("df, table", [(1, 12.706), (3, 3.182), (30, 2.042), (31, 2.040), (200, 1.972)])
def test_t_quantile_matches_the_printed_table(df, table):
    assert t_quantile(0.975, df) == pytest.approx(table, abs=5e-4)


def test_t_quantile_for_32_prompts_is_not_the_normal_one():
    assert t_quantile(0.975, 31) == pytest.approx(2.0395, abs=1e-4)  # 4% wider than 1.96


def test_mean_ci_of_one_to_four():
    # sd = sqrt(5/3), se = sd / 2, t(0.975, 3) = 3.18245
    ci = mean_ci([1, 2, 3, 4])
    assert ci.mean == 2.5 and ci.n == 4
    assert ci.half == pytest.approx(3.182446305 * math.sqrt(5 / 3) / 2, rel=1e-9)
    assert ci.low == pytest.approx(2.5 - 2.0542602568, rel=1e-9)
    assert ci.high == pytest.approx(2.5 + 2.0542602568, rel=1e-9)


def test_mean_ci_of_constant_values_has_zero_width_and_one_value_none():
    ci = mean_ci([0.25, 0.25, 0.25])
    assert (ci.low, ci.mean, ci.high) == (0.25, 0.25, 0.25)
    one = mean_ci([3.0])
    assert one.mean == 3.0 and math.isnan(one.low) and math.isnan(one.high) and not one.excludes_zero


def test_paired_diff_by_hand():
    # differences 1, 0.5, -0.5, 2, 0.5: mean 0.7, variance 3.3 / 4, t(0.975, 4) = 2.776445
    ci = paired_diff([2.0, 3.5, 1.0, 4.0, 2.5], [1.0, 3.0, 1.5, 2.0, 2.0])
    assert ci.mean == pytest.approx(0.7)
    assert ci.half == pytest.approx(2.776445105 * math.sqrt(0.825 / 5), rel=1e-8)
    assert not ci.excludes_zero  # [-0.43, 1.83]
    shifted = paired_diff([x + 2 for x in (2.0, 3.5, 1.0, 4.0, 2.5)], [1.0, 3.0, 1.5, 2.0, 2.0])
    assert shifted.excludes_zero and shifted.low == pytest.approx(2.7 - ci.half)


def test_paired_diff_removes_the_shared_prompt_effect():
    # prompts differ a lot, the methods differ by exactly 0.1 on every prompt
    base = [1.0, 5.0, 9.0, 20.0]
    ci = paired_diff([b + 0.1 for b in base], base)
    assert ci.mean == pytest.approx(0.1) and ci.half == pytest.approx(0.0, abs=1e-12) and ci.excludes_zero
    assert mean_ci(base).half > 5.0  # the unpaired interval of either method is wide


def test_exp_maps_nll_differences_to_perplexity_ratios():
    ratio = paired_diff([math.log(4.0)] * 3, [math.log(2.0)] * 3).exp()
    assert ratio.mean == pytest.approx(2.0) and ratio.low == pytest.approx(2.0)


def test_bad_inputs_are_clear_errors():
    with pytest.raises(ValueError, match="one value per item"):
        paired_diff([1, 2], [1])
    with pytest.raises(ValueError, match="no values"):
        mean_ci([])
    with pytest.raises(ValueError, match="finite"):
        spread([1.0, float("nan")])


def test_spread():
    s = spread([3.0, 1.0, 2.0, 10.0])
    assert (s.min, s.median, s.max, s.n) == (1.0, 2.5, 10.0, 4)
    assert s.format("{:.1f}") == "2.5 (1.0-10.0)"
    assert spread([1.234]).format() == "1.23"


def test_paired_ratio_endpoints_are_where_the_scaled_difference_stops_being_significant():
    a, b = [0.9, 1.7, 0.4, 1.1, 2.2, 0.8, 1.5, 0.6], [1.4, 2.0, 0.9, 1.2, 3.1, 1.5, 1.6, 1.3]
    ci = paired_ratio(a, b)
    assert ci.mean == pytest.approx(sum(a) / sum(b)) and ci.n == 8
    assert ci.low < ci.mean < ci.high
    # Fieller: at each end the t interval of mean(a - r b) just touches zero
    assert mean_ci([x - ci.low * y for x, y in zip(a, b)]).low == pytest.approx(0.0, abs=1e-9)
    assert mean_ci([x - ci.high * y for x, y in zip(a, b)]).high == pytest.approx(0.0, abs=1e-9)
    # a ratio inside is not distinguishable from it, one outside is
    assert not paired_diff(a, [0.99 * ci.high * y for y in b]).excludes_zero
    assert paired_diff(a, [1.01 * ci.high * y for y in b]).excludes_zero


def test_paired_ratio_of_exactly_proportional_values_has_no_width_and_no_bound_without_a_clear_denominator():
    b = [1.0, 2.0, 3.0, 4.0]
    ci = paired_ratio([0.5 * y for y in b], b)
    assert (ci.mean, ci.low, ci.high) == pytest.approx((0.5, 0.5, 0.5))
    wild = paired_ratio([1.0, 1.0, 1.0], [5.0, -4.0, 0.5])  # denominator mean 0.5, sd 4.5
    assert wild.mean == pytest.approx(2.0) and wild.low == -math.inf and wild.high == math.inf
    with pytest.raises(ValueError, match="one value per item"):
        paired_ratio([1.0], [1.0, 2.0])
