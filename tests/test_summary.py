"""``bench.summarize`` on synthetic timings whose speed-up, ideal and efficiency are known."""

from __future__ import annotations

import pytest

from glass_llm.bench import BenchSettings, RunTiming, summarize


def _run(variant: str, step: float, total: float, steps: int = 10, select: float = 0.0, rss: float = 100.0,
         compact: float = 0.0, load: float = 0.5) -> RunTiming:
    return RunTiming(variant=variant, total_s=total, prefill_s=0.05, select_s=select, decode_s=step * steps,
                     steps=steps, peak_rss_mb=rss, compact_mb=compact, median_step_s=step, load_before=load)


def _records(densities=(0.5,)):
    # dense step 100 ms and skip-FFN step 60 ms (medians over 3 rounds: 100, 60): FFN time 40 ms
    runs = {
        "dense": [_run("dense", s, 10 * s + 0.1, rss=r) for s, r in ((0.100, 900), (0.090, 950), (0.130, 920))],
        "skip-ffn": [_run("skip-ffn", s, 10 * s) for s in (0.060, 0.055, 0.070)],
        "d=0.5": [_run("d=0.5", s, 10 * s + 0.1, select=sel, rss=1000, compact=152, load=1.5)
                  for s, sel in ((0.090, 0.2), (0.085, 0.1), (0.095, 0.3))],
        "d=0.25": [_run("d=0.25", s, 10 * s + 0.1) for s in (0.080, 0.075, 0.085)],
    }
    settings = BenchSettings(densities=densities, gen_tokens=11, repeats=3)
    return summarize(runs, settings, "m", batch=4, prompt_tokens=16, dtype="float32")


def test_speedup_ideal_and_efficiency():
    (rec,) = _records()
    assert rec.dense_step_ms == pytest.approx(100.0) and rec.skip_ffn_step_ms == pytest.approx(60.0)
    assert rec.sparse_step_ms == pytest.approx(90.0)
    assert rec.speedup == pytest.approx(100 / 90)
    assert rec.ideal_speedup == pytest.approx(100 / (60 + 0.5 * 40))  # 1.25
    assert rec.efficiency == pytest.approx((100 / 90) / 1.25)  # 0.889
    assert rec.ffn_share == pytest.approx(0.4)


def test_throughput_end_to_end_and_selection():
    (rec,) = _records()
    assert rec.dense_tok_s == pytest.approx(4 / 0.100) and rec.sparse_tok_s == pytest.approx(4 / 0.090)
    assert rec.e2e_speedup == pytest.approx(1.1 / 1.0)  # medians of whole generate calls
    assert rec.select_ms == pytest.approx(200.0) and rec.select_in_decode_steps == pytest.approx(2.0)
    assert rec.peak_rss_mb == 1000 and rec.dense_peak_rss_mb == 950 and rec.compact_weights_mb == 152
    assert rec.max_load_avg == 1.5


def test_one_record_per_density_with_its_own_ideal():
    low, half = _records((0.25, 0.5))
    assert (low.density, half.density) == (0.25, 0.5)
    assert low.ideal_speedup == pytest.approx(100 / (60 + 0.25 * 40))
    assert low.speedup == pytest.approx(100 / 80)
    assert low.efficiency == pytest.approx((100 / 80) / (100 / 70))  # 0.875


def test_mask_refreshes_are_spread_over_the_steps():
    runs = {
        "dense": [_run("dense", 0.100, 1.1) for _ in range(3)],
        "skip-ffn": [_run("skip-ffn", 0.060, 0.6) for _ in range(3)],
        "d=0.5": [],
    }
    for per_refresh in (0.15, 0.20, 0.25):  # 2 refreshes over 10 steps each run
        r = _run("d=0.5", 0.080, 1.0)
        r.refreshes, r.refresh_s = 2, 2 * per_refresh
        runs["d=0.5"].append(r)
    (rec,) = summarize(runs, BenchSettings(densities=(0.5,), gen_tokens=11, repeats=3), "m", batch=1,
                       prompt_tokens=16, dtype="float32")
    assert rec.sparse_step_ms == pytest.approx(80.0 + 2 * 200.0 / 10)  # the median run's refreshes, per step
    assert rec.speedup == pytest.approx(100 / 120)
    assert rec.refreshes == 2 and rec.refresh_ms == pytest.approx(200.0)
    assert rec.refresh_in_decode_steps == pytest.approx(2.0)
    from glass_llm.bench_summary import format_table

    assert "2 mask refreshes per run, 200.0 ms each = 2.00 dense steps" in format_table([rec])


def test_dense_start_steps_count_as_dense_in_the_step_and_the_ideal():
    runs = {
        "dense": [_run("dense", 0.100, 1.1) for _ in range(3)],
        "skip-ffn": [_run("skip-ffn", 0.060, 0.6) for _ in range(3)],
        "d=0.5": [],
    }
    for _ in range(3):  # the first 2 of 10 decode steps dense (0.105 s each), the other 8 at 0.080 s
        r = _run("d=0.5", 0.080, 1.0)
        r.dense_steps, r.dense_steps_s = 2, 0.210
        runs["d=0.5"].append(r)
    (rec,) = summarize(runs, BenchSettings(densities=(0.5,), gen_tokens=11, repeats=3), "m", batch=1,
                       prompt_tokens=16, dtype="float32")
    assert rec.sparse_step_ms == pytest.approx((8 * 80.0 + 210.0) / 10)
    assert rec.ideal_speedup == pytest.approx(100 / ((8 * (60 + 0.5 * 40) + 2 * 100) / 10))
    assert rec.dense_start_steps == 2
    from glass_llm.bench_summary import format_table

    assert "the first 2 decode steps dense" in format_table([rec])


def test_several_methods_share_the_rounds_and_get_a_record_each():
    runs = {"dense": [_run("dense", 0.100, 1.1) for _ in range(3)],
            "skip-ffn": [_run("skip-ffn", 0.060, 0.6) for _ in range(3)],
            "griffin d=0.5": [_run("griffin d=0.5", 0.080, 0.9) for _ in range(3)],
            "glass d=0.5": [_run("glass d=0.5", 0.090, 1.0) for _ in range(3)]}
    settings = BenchSettings(densities=(0.5,), gen_tokens=11, repeats=3, methods=("griffin", "glass"))
    assert settings.variant("glass", 0.5) == "glass d=0.5"
    griffin, glass = summarize(runs, settings, "m", batch=1, prompt_tokens=16, dtype="float32")
    assert (griffin.method, glass.method) == ("griffin", "glass")
    assert griffin.speedup == pytest.approx(100 / 80) and glass.speedup == pytest.approx(100 / 90)
    assert griffin.dense_step_ms == glass.dense_step_ms == pytest.approx(100.0)
    assert set(glass.raw) == {"dense", "skip-ffn", "d=0.5"}  # the renderers' layout, whatever the run name
    from glass_llm.bench_summary import format_table

    table = format_table([griffin, glass])
    assert table.splitlines()[0].startswith("method") and table.splitlines()[2].startswith("glass ")
