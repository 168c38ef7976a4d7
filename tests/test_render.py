"""BENCHMARKS.md is generated from committed records: it must equal the rendering, and
the renderer's arithmetic must hold on records with known answers."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

from glass_llm.evaluation.report import comparisons_markdown, paired_comparisons

ROOT = Path(__file__).resolve().parents[1]


def _render_module():
    spec = importlib.util.spec_from_file_location("render", ROOT / "benchmarks" / "render.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_benchmarks_md_equals_the_rendering():
    render = _render_module()
    assert (ROOT / "BENCHMARKS.md").read_text(encoding="utf-8") == render.render(), \
        "BENCHMARKS.md is out of date: edit benchmarks/text/ or the records, then run python benchmarks/render.py"


def _run(step_s: float, total_s: float, rss: float = 1000.0) -> dict:
    return {"median_step_s": step_s, "total_s": total_s, "select_s": 0.1, "peak_rss_mb": rss}


def test_speed_row_takes_ratios_within_each_round():
    record = {"density": 0.5, "batch": 2, "share_batch": True, "gen_tokens": 64, "compact_weights_mb": 152.0,
              "max_load_avg": 1.5,
              "raw": {"dense": [_run(0.10, 10.0), _run(0.20, 20.0), _run(0.12, 12.0)],
                      "skip-ffn": [_run(0.06, 0.0), _run(0.12, 0.0), _run(0.08, 0.0)],
                      "d=0.5": [_run(0.08, 8.0), _run(0.10, 16.0), _run(0.10, 10.0)]}}
    row = _render_module().speed_row(record)
    # per round: speed-up 1.25, 2.0, 1.2; ideal 0.10/0.08 = 1.25, 0.20/0.16 = 1.25, 0.12/0.10 = 1.2
    assert row[:6] == ["2", "1 shared", "float", "0.5", "64", "3"]  # records without a weights field: float
    assert row[6] == "16.7 (10.0-20.0)"  # dense tok/s = batch / step
    assert row[8] == "1.25 (1.20-2.00)"
    assert row[9] == "1.25 (1.20-1.25)"
    assert row[10] == "1.00 (1.00-1.60)"  # efficiency per round: 1.0, 1.6, 1.0
    assert row[11] == "1.25 (1.20-1.25)"  # end to end: 10/8, 20/16, 12/10
    assert _render_module().speed_row({**record, "weights": "int8"})[2] == "int8"


def test_unknown_directive_is_a_clear_error(tmp_path):
    render = _render_module()
    (tmp_path / "00-a.md").write_text("# A\n\n<!-- render: plot x -->\n", encoding="utf-8")
    with pytest.raises(render.RenderError, match="00-a.md:3: unknown table kind 'plot'"):
        render.render(tmp_path)


def _records(method: str, nll: list[float], kl: list[float]) -> list[dict]:
    return [{"method": method, "density": 0.5, "lam": 1.0 if method == "griffin" else 0.5, "prompt_tokens": 8,
             "doc": i, "item": "P8-b0", "nll": n, "kl": k} for i, (n, k) in enumerate(zip(nll, kl))]


def test_paired_comparisons_pair_by_prompt():
    base_nll = [1.0, 2.0, 3.0, 4.0]
    records = (_records("griffin", base_nll, [1.0, 2.0, 3.0, 4.0])
               + _records("glass-a", [x - math.log(2) for x in base_nll], [0.5, 1.5, 2.5, 3.5])
               + _records("dense", [0.5] * 4, [0.0] * 4))
    (c,) = paired_comparisons(records, "griffin")
    assert c["label"] == "glass-a (lam 0.5)" and c["n"] == 4
    assert c["ppl_ratio"].mean == pytest.approx(0.5) and c["ppl_ratio"].high == pytest.approx(0.5)
    assert c["kl_diff"].mean == pytest.approx(-0.5) and c["kl_diff"].excludes_zero
    assert c["kl_rel"] == pytest.approx(-0.5 / 2.5)
    table = comparisons_markdown([c])
    assert "| 0.5 | 8 | glass-a (lam 0.5) | 4 | 0.500 [0.500, 0.500]* | -0.500 [-0.500, -0.500]* | -20.0% |" in table


def test_a_fidelity_run_renders_tables_and_paired_comparisons(tmp_path):
    from types import SimpleNamespace

    from glass_llm.evaluation.report import aggregate, records_csv

    records = (_records("griffin", [1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
               + _records("glass-a", [0.9, 1.8, 2.9], [0.8, 1.9, 2.7]))
    for r in records:
        r["statistic"], r["jaccard"], r["positions"] = "activation", [0.5, 0.7], 63
    settings = SimpleNamespace(model="m", corpus="c", split="test", gen_tokens=64, methods=("griffin", "glass-a"))
    (tmp_path / "results.json").write_text(json.dumps(aggregate(records, settings)), encoding="utf-8")
    (tmp_path / "records.csv").write_text(records_csv(records), encoding="utf-8")
    text = _render_module()._fidelity_run(tmp_path, "####")
    assert "| griffin | 2.000 ± 2.484 |" in text  # mean 2, t(0.975, 2) * 1 / sqrt(3) = 2.484
    assert "#### Paired against griffin" in text and "| 0.5 | 8 | glass-a (lam 0.5) | 3 |" in text
    # against glass-a, GRIFFIN's KL is higher by 0.2, 0.1, 0.3: mean +0.200, t(0.975, 2) * 0.1 / sqrt(3) = 0.248
    assert "| 0.5 | 8 | griffin | 3 |" in text.split("Paired against glass-a")[1]
    assert "+0.200 [-0.048, +0.448] |" in text


def test_frontier_points_spread_refreshes_and_pair_methods_with_their_speed_run(tmp_path):
    spec = importlib.util.spec_from_file_location("frontier", ROOT / "benchmarks" / "frontier.py")
    frontier = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(frontier)

    def run(step, refresh_s=0.0, dense_steps=0, dense_steps_s=0.0):
        return {"median_step_s": step, "refresh_s": refresh_s, "steps": 10, "dense_steps": dense_steps,
                "dense_steps_s": dense_steps_s}

    def bench(method, sparse):
        return {"method": method, "density": 0.5, "prompt_tokens": 16, "gen_tokens": 64, "repeats": 2, "threads": 2,
                "dtype": "float32", "raw": {"dense": [run(0.1), run(0.2)], "skip-ffn": [run(0.05), run(0.1)],
                                            "d=0.5": sparse}}

    # refreshes of 0.2 s over 10 steps add 0.02 s per step
    (tmp_path / "bench.json").write_text(json.dumps([
        bench("griffin", [run(0.08), run(0.16)]), bench("glass", [run(0.08), run(0.1)]),
        bench("glass-refresh", [run(0.08, 0.2), run(0.08, 0.2)]),
        # 2 dense-start steps of 0.1 s each and 8 sparse ones of 0.05 s: 0.06 s per step
        bench("glass-refresh-start-fade", [run(0.05, 0.0, 2, 0.2), run(0.05, 0.0, 2, 0.2)])]))
    results = [{"method": m, "density": 0.5, "kl": kl, "kl_ci95": 0.1}
               for m, kl in (("dense", 0.0), ("griffin", 2.0), ("glass-a", 1.0), ("glass", 0.9), ("glass-refresh", 0.7),
                             ("glass-refresh-start-fade", 0.5))]
    (tmp_path / "results.json").write_text(json.dumps(results))
    (tmp_path / "settings.json").write_text(json.dumps({"model": "m", "corpus": "wikipedia", "split": "test",
                                                        "prompt_tokens": [8], "gen_tokens": 64, "n_prompts": 4}))
    pts = {p["method"]: p for p in frontier.points(tmp_path)}
    assert set(pts) == {"griffin", "glass-a", "glass", "glass-refresh", "glass-refresh-start-fade"}
    assert pts["glass-refresh-start-fade"]["speedup_min"] == pytest.approx(0.1 / 0.06)
    assert pts["griffin"]["speedup"] == pytest.approx(1.25) and pts["glass-a"]["speedup"] == pytest.approx(1.25)
    assert pts["glass"]["speedup_min"] == pytest.approx(1.25) and pts["glass"]["speedup_max"] == pytest.approx(2.0)
    assert pts["glass-refresh"]["speedup_min"] == pytest.approx(0.1 / 0.1)
    assert pts["glass-refresh"]["speedup_max"] == pytest.approx(0.2 / 0.1)
    table = frontier.markdown(tmp_path)
    assert "| 0.5 | glass-refresh | 0.700 ± 0.100 |" in table
    frontier.plot(list(pts.values()), "m", tmp_path / "f.png")
    assert (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"


def test_method_labels_name_lam_only_where_it_is_the_aggregation_weight():
    from glass_llm.evaluation.report import method_label

    assert method_label("griffin", 1.0) == "griffin" and method_label("oracle", 0.0) == "oracle"
    assert method_label("glass-a", 0.5) == "glass-a (lam 0.5)"
    assert method_label("glass", 0.5) == "glass (lam 0.5)"  # the fixed lam: the aggregation weight
    assert method_label("glass-refresh", 0.5) == "glass-refresh"  # adaptive: lam tilts the calibrated lams
    assert method_label("glass-refresh", 0.7) == "glass-refresh (tilt 0.7)"


def _bench_script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_demo_text_figures_use_the_library_repetition_measure():
    demo_text = _bench_script("demo_text")
    loop = list(range(10)) + [7, 8] * 20
    fig = demo_text.figures(loop)
    assert fig["collapsed"] and fig["repeat4_second_half"] > 0.9 and 0 < fig["repeat4"] < fig["repeat4_second_half"]
    assert demo_text.figures(list(range(50))) == {"repeat4": 0.0, "repeat4_second_half": 0.0, "collapsed": False}


def test_demo_text_and_decode_overhead_tables_read_their_records(tmp_path):
    demo_text = _bench_script("demo_text")

    def run(method, density, texts, collapsed):
        return {"method": method, "density": density,
                "replies": [{"text": t, "repeat4": 0.5 * c, "collapsed": c} for t, c in zip(texts, collapsed)]}

    doc = {"model": "m", "gen_tokens": 8, "prompts": ["p0", "p1"], "collapse_threshold": 0.5,
           "runs": [run("dense", 1.0, ["fine | text", "ok"], [False, False]),
                    run("glass", 0.5, ["loop loop", "x"], [True, False]),
                    run("glass", 0.9, ["fine", "ok"], [False, False])]}
    (tmp_path / "d.json").write_text(json.dumps(doc))
    table = demo_text.markdown(tmp_path / "d.json")
    assert "| glass | 0.5 | 0.25 | 1/2 |" in table and "| glass | 0.9 | 0.00 | 0/2 |" in table
    assert "| dense | fine \\| text |" in table and "| glass | loop loop |" in table
    assert table.index("| glass | 0.9 |") < table.index("| glass | 0.5 |")

    overhead = _bench_script("decode_overhead")
    s = lambda v: {"median": v, "min": v, "max": v}  # noqa: E731
    rec = {"model": "m", "n_blocks": 30, "threads": 1, "wrapped_us": s(320.0), "written_out_us": s(300.0),
           "wrapper_cost_us_per_block": s(20.0), "hooks_us": s(4.0), "step_ms": s(100.0),
           "max_saving_ms_per_step": s(0.604), "max_saving_share_of_step": s(0.00604)}
    (tmp_path / "o.json").write_text(json.dumps(rec))
    assert "| m | 30 | 1 | 320 us | 300 us | 20.0 (20.0 to 20.0) us | 4.0 us | 100.0 ms | 0.60 ms (0.6%) |" \
        in overhead.markdown([tmp_path / "o.json"])


def _goal_run(folder: Path, kls: dict[str, list[float]], split: str = "test", short_lam: float | None = 0.5,
              prompt_tokens: int = 8, reply: bool | None = True, build: str | None = None,
              near: bool | None = True) -> None:
    """A run's files; ``short_lam`` None: written before the short-prompt lam check (no ``prior_short_lam``);
    ``reply`` None: before the schedule of greedy replies (no ``prior_reply_schedule``); ``near`` None: before
    the nearest-replies check (no ``prior_neighbours``); ``build``: the prior's fingerprint (None: before it
    was recorded)."""
    from glass_llm.evaluation.report import records_csv

    folder.mkdir(parents=True)
    records = [{"method": m, "density": 0.5, "lam": 0.5, "prompt_tokens": prompt_tokens, "doc": i, "item": "P8-b0",
                "statistic": "activation", "nll": 1.0, "kl": k, "jaccard": None, "positions": 63}
               for m, values in kls.items() for i, k in enumerate(values)]
    (folder / "records.csv").write_text(records_csv(records), encoding="utf-8")
    (folder / "settings.json").write_text(json.dumps({"model": "m", "corpus": "c", "split": split,
                                                      "gen_tokens": 64}), encoding="utf-8")
    extra = {} if short_lam is None else {"prior_short_lam": short_lam}
    if short_lam is not None and reply is not None:
        extra["prior_reply_schedule"] = [reply]
        if near is not None:
            extra["prior_neighbours"] = near
    if build is not None:
        extra["prior_fingerprint"] = build
    (folder / "results.json").write_text(json.dumps([{"method": m, **extra} for m in kls]), encoding="utf-8")


def test_goal_table_pairs_methods_across_runs_of_one_pool(tmp_path):
    from glass_llm.intervals import paired_ratio

    spec = importlib.util.spec_from_file_location("goals", ROOT / "benchmarks" / "goals.py")
    goals = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(goals)
    base = [float(i) for i in range(1, 9)]
    half = [x / 2 + (0.1 if i % 2 else -0.1) for i, x in enumerate(base)]
    oracle = [x / 4 for x in base]
    _goal_run(tmp_path / "a", {"glass-a": base, "global": base, "oracle": oracle})
    _goal_run(tmp_path / "b", {"glass-a": base, "glass": half, "glass-refresh": half})
    _goal_run(tmp_path / "c", {"glass": [9.0] * 8}, split="calib")  # another split: not pooled
    table = goals.markdown(tmp_path)

    def cell(a, b, mark):
        ci = paired_ratio(a, b)
        return f"{ci.mean:.2f}{mark} [{ci.low:.2f}, {ci.high:.2f}]"

    vs_a = cell(half, base, "*")  # 0.5, its interval well below the goal of 0.8
    assert vs_a.startswith("0.50*")
    assert f"| m | c | 64 | earlier | 8 | `glass` | 8 | {vs_a} | {vs_a} | – | – |" in table  # no oracle goal without refresh
    vs_oracle = cell(half, oracle, " (x)")  # 2.0, its interval entirely above 1
    assert vs_oracle.startswith("2.00 (x)")
    assert f"| `glass-refresh` | 8 | {vs_a} | {vs_a} | – | {vs_oracle} |" in table
    _goal_run(tmp_path / "d", {"glass-a": [x + 1 for x in base]})  # the same prompts scored otherwise
    with pytest.raises(ValueError, match="runs a and d disagree on glass-a at P = 8, document 0"):
        goals.markdown(tmp_path)


@pytest.mark.parametrize("short_lam,reply,stored_used", [(None, None, False), (0.5, False, False), (0.25, False, False),
                                                         (0.25, True, False), (0.5, False, True)])
def test_goal_table_reads_glass_of_runs_before_its_changes(tmp_path, short_lam, reply, stored_used):
    """A run without ``prior_short_lam`` scored ``glass-fixed-lam`` under the name ``glass``, one with it but
    without ``prior_reply_schedule`` ``glass-stored-schedule``. The model's lam check record says which
    records score ``glass-stored-schedule``: ``glass-fixed-lam``'s where it kept 0.5 (and from 32 prompt
    tokens), ``glass-prompt-lam``'s where it chose 0.25; its reply check record whether those are today's
    ``glass`` (where it and the stored schedule's check keep one density at 0.5). ``glass-reply-schedule``'s
    records are ``glass``'s (on a model whose nearest-replies check failed: the next test)."""
    spec = importlib.util.spec_from_file_location("goals", ROOT / "benchmarks" / "goals.py")
    goals = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(goals)
    folder = tmp_path / "fidelity"
    (tmp_path / "neighbours-check-m.json").write_text(json.dumps({"used": False}), encoding="utf-8")
    if short_lam is not None:
        (tmp_path / "lam-check-m.json").write_text(json.dumps({"short_lam": short_lam}), encoding="utf-8")
    if reply is not None:
        (tmp_path / "reply-check-m.json").write_text(json.dumps({"densities": [0.3, 0.5, 0.7], "used": [True, reply, False],
                                                                 "stored_used": [True, stored_used, True]}),
                                                       encoding="utf-8")
    base = [float(i) for i in range(1, 9)]
    old = [x * 0.7 for x in base]
    rule = [x * 0.6 for x in base]
    _goal_run(folder / "old", {"glass-a": base, "glass": old, "glass-prompt-lam": rule}, short_lam=None)
    _goal_run(folder / "old32", {"glass-a": base, "glass": old}, short_lam=None, prompt_tokens=32)
    pool = goals.pools(folder)[("m", "c", 64, "earlier")]
    assert pool["glass-fixed-lam"] == {**{(8, i): k for i, k in enumerate(old)},
                                       **{(32, i): k for i, k in enumerate(old)}}
    stored = {} if short_lam is None else {(32, i): k for i, k in enumerate(old)}
    if short_lam is not None:
        stored.update({(8, i): k for i, k in enumerate(old if short_lam == 0.5 else rule)})
    assert pool.get("glass-stored-schedule", {}) == stored
    same = reply is False and not stored_used  # glass and the stored schedule both keep one density at 0.5
    glass = stored if same else {}
    assert pool.get("glass", {}) == glass
    # a run of glass between the two changes joins the stored schedule's records and must agree with them
    at8 = [stored.get((8, i), 0.5 * x) for i, x in enumerate(base)]
    _goal_run(folder / "mid", {"glass": at8[:4]}, short_lam=short_lam or 0.5, reply=None)
    mid = stored or {(8, i): at8[i] for i in range(4)}
    assert goals.pools(folder)[("m", "c", 64, "earlier")]["glass-stored-schedule"] == mid
    # the opt-in name's records are glass's, and agree with the stored schedule's where that is glass
    mine = at8 if same else [x * 0.4 for x in base]
    _goal_run(folder / "reply", {"glass-reply-schedule": mine}, short_lam=short_lam or 0.5, reply=bool(reply))
    assert goals.pools(folder)[("m", "c", 64, "earlier")]["glass"] == {**glass, **{(8, i): k for i, k in enumerate(mine)}}
    _goal_run(folder / "new", {"glass": [x * 0.9 for x in base]}, short_lam=short_lam or 0.5, reply=bool(reply))
    with pytest.raises(ValueError, match="disagree on glass at P = 8"):
        goals.pools(folder)


@pytest.mark.parametrize("near", [None, False, True])
def test_goal_table_reads_glass_of_runs_before_the_nearest_replies(tmp_path, near):
    """A run with ``prior_reply_schedule`` but without ``prior_neighbours`` scored ``glass-one-prior`` under
    the name ``glass``. The model's nearest-replies check record says which records score today's ``glass``:
    ``glass-one-prior``'s where the check failed, ``glass-neighbours``'s where it passed."""
    spec = importlib.util.spec_from_file_location("goals", ROOT / "benchmarks" / "goals.py")
    goals = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(goals)
    folder = tmp_path / "fidelity"
    (tmp_path / "lam-check-m.json").write_text(json.dumps({"short_lam": 0.25}), encoding="utf-8")
    (tmp_path / "reply-check-m.json").write_text(json.dumps({"densities": [0.5], "used": [True], "stored_used": [True]}),
                                                 encoding="utf-8")
    if near is not None:
        (tmp_path / "neighbours-check-m.json").write_text(json.dumps({"used": near}), encoding="utf-8")
    base = [float(i) for i in range(1, 9)]
    one = {(8, i): x * 0.7 for i, x in enumerate(base)}
    nearest = {(8, i): x * 0.6 for i, x in enumerate(base)}
    _goal_run(folder / "before", {"glass-a": base, "glass": list(one.values()), "glass-neighbours": list(nearest.values())},
              near=None)
    pool = goals.pools(folder)[("m", "c", 64, "earlier")]
    assert pool["glass-one-prior"] == one and pool["glass-neighbours"] == nearest
    assert pool.get("glass") == {None: None, False: one, True: nearest}[near]
    table = goals.markdown(folder)
    shown = {None: ("glass-one-prior", "glass-neighbours"), False: ("glass", "glass-neighbours"),
             True: ("glass-one-prior", "glass")}[near]
    assert [f"`{m}`" in table for m in ("glass", "glass-one-prior", "glass-neighbours")] == [
        m in shown for m in ("glass", "glass-one-prior", "glass-neighbours")]
    # a run written with the check scored today's glass and must agree with the records read as it
    if near is not None:
        _goal_run(folder / "after", {"glass": [x * 0.9 for x in base]}, near=near)
        with pytest.raises(ValueError, match="disagree on glass at P = 8"):
            goals.pools(folder)


def test_goal_pools_keep_prior_builds_apart_and_share_what_reads_no_prior(tmp_path):
    """Runs of another prior build (``prior_fingerprint``) pool apart: their prior-reading methods may
    differ from the earlier build's; dense, GRIFFIN and the oracle join every build and must agree."""
    spec = importlib.util.spec_from_file_location("goals", ROOT / "benchmarks" / "goals.py")
    goals = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(goals)
    base = [float(i) for i in range(1, 9)]
    _goal_run(tmp_path / "a", {"glass-a": base, "griffin": [2 * x for x in base], "oracle": [x / 4 for x in base]})
    _goal_run(tmp_path / "b", {"glass-a": [1.02 * x for x in base], "glass": [0.5 * x for x in base]},
              build="0123456789ab")
    pools = goals.pools(tmp_path)
    earlier, other = pools[("m", "c", 64, "earlier")], pools[("m", "c", 64, "0123456789ab")]
    assert earlier["glass-a"][(8, 1)] == 2.0 and other["glass-a"][(8, 1)] == pytest.approx(2.04)
    assert other["griffin"] == earlier["griffin"] and other["oracle"] == earlier["oracle"] and "glass" not in earlier
    table = goals.markdown(tmp_path)
    assert "| m | c | 64 | 0123456 | 8 | `glass` | 8 | 0.49* [" in table and "| earlier | 8 | `glass` |" not in table
    _goal_run(tmp_path / "c", {"griffin": [3 * x for x in base]}, build="0123456789ab")  # reads no prior: must agree
    with pytest.raises(ValueError, match="runs a and c disagree on griffin"):
        goals.pools(tmp_path)
