"""The benchmark runs end to end at toy sizes (`--tiny`); no timing is asserted anywhere.

The PyTorch peer is optional (experiments/bench/requirements.txt): without torch the tables
show "—" in its column and the headline ratios are left out.
"""

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "experiments" / "bench" / "run.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_run", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny_run(bench, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "bench.md"
    results = bench.main(["--tiny", "--only", "zaremba_small,small_cifg,sample,tutorial_step",
                          "--out", str(out)])
    return results, out.read_text()


def test_tiny_run_measures_every_section_and_writes_the_results_file(tiny_run):
    results, text = tiny_run
    assert [r["bench"].name for r in results["train"]] == ["zaremba_small", "small_cifg"]
    assert [r["bench"].name for r in results["eval"]] == ["zaremba_small"]
    for section in ("## Training", "## Evaluation", "## Sampling", "## 001's SGD step"):
        assert section in text
    for line in ("- commit:", "- machine:", "- versions:", "- command:"):
        assert line in text
    assert "PARTIAL" not in text
    rates = [v for r in results["train"] + results["eval"] for v in r["rates"].values()]
    rates += list(results["sample"]["rates"].values()) + list(results["tutorial"]["rates"].values())
    assert all(rate > 0 for rs in rates for rate in rs)


def test_peers_run_where_they_have_the_cell(tiny_run, bench):
    results, text = tiny_run
    small, cifg = results["train"]
    assert "flax" in small["rates"] and set(cifg["rates"]) == {"jax_lm"}  # no CIFG peer
    if bench.torch is None:
        assert "pytorch" not in small["rates"]
    else:
        assert "pytorch" in small["rates"]
        assert "zaremba_small jax_lm/pytorch = " in text


def test_torch_peer_can_be_left_out(bench, tmp_path):
    try:
        results = bench.main(["--tiny", "--only", "zaremba_small", "--no-torch", "--out", "-"])
    finally:
        bench.torch = _reimport_torch()
    assert "pytorch" not in results["train"][0]["rates"]


def test_on_a_cpu_backend_the_torch_peer_stays_on_the_cpu(bench, tiny_run):
    import jax

    results, text = tiny_run
    if jax.default_backend() != "cpu":
        pytest.skip("JAX runs on an accelerator here")
    assert bench.TORCH_DEVICE == "cpu" and "- accelerator:" not in text
    assert bench.parse_args(["--matmul-precision", "tf32"]).matmul_precision == "tf32"
    with pytest.raises(SystemExit):
        bench.parse_args(["--matmul-precision", "bf16"])


def test_rows_without_a_ceiling_show_dashes_not_a_percentage(bench):
    b = bench.tiny(bench.TRAIN[0])
    result = {"bench": b, "rates": {"jax_lm": [100.0, 120.0]}, "flops_per_token": 2e6,
              "ceiling": None}
    assert bench._row(result).endswith("| — | — |")
    assert bench._row({**result, "ceiling": 200.0}).endswith("| 200 | 55% |")


def test_a_run_cut_short_leaves_its_finished_tables_marked_partial(bench, tmp_path,
                                                                    monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(bench, "bench_sample", interrupted)
    monkeypatch.setattr(bench, "torch", bench.torch)  # --no-torch clears it; restored after
    out = tmp_path / "bench.md"
    with pytest.raises(KeyboardInterrupt):
        bench.main(["--tiny", "--no-torch", "--only", "small_rnn,sample", "--out", str(out)])
    text = out.read_text()
    assert "PARTIAL" in text and "| small_rnn |" in text and "## Sampling" not in text


def _reimport_torch():
    try:
        import torch
    except ImportError:
        return None
    return torch


def test_rounds_time_steady_calls_not_the_first_call_after_a_switch(bench, monkeypatch):
    """A call right after another implementation ran costs 10 fake seconds, any other 1: each
    round's untimed first call absorbs the switch, so every rate is 1 call per second."""
    clock, last = [0.0], [None]
    monkeypatch.setattr(bench.time, "perf_counter", lambda: clock[0])

    def implementation(name):
        def run(n):
            for _ in range(n):
                clock[0] += 10.0 if last[0] != name else 1.0
                last[0] = name
        return run

    rates = bench.alternate({"a": implementation("a"), "b": implementation("b")}, units=1.0,
                            rounds=3, min_seconds=2.0)
    assert rates == {"a": [1.0] * 3, "b": [1.0] * 3}


@pytest.mark.parametrize("name, mflop", [("zaremba_small", 15.8), ("zaremba_medium", 79.6)])
def test_flops_per_training_token_match_the_perf_notes(bench, name, mflop):
    config = {b.name: b for b in bench.TRAIN}[name]
    per_token = bench.flops(bench.matmuls(config)) / config.tokens
    assert round(per_token / 1e6, 1) == mflop


def test_breakdown_runs_at_toy_size():
    """experiments/bench/breakdown.py (jax_lm vs PyTorch piece by piece) runs end to end."""
    pytest.importorskip("torch")
    spec = importlib.util.spec_from_file_location(
        "bench_breakdown", BENCH.parent / "breakdown.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    text = module.main(["--sizes", "tiny", "--rounds", "1", "--min-seconds", "0"])
    for line in ("| embedding + 2 LSTM layers, forward + backward |",
                 "| embedding + 2 LSTM layers, forward only (no gradient) |",
                 "| training step (+ clip 5, SGD) |", "| output layer dh = g @ Wᵀ |"):
        assert line in text


def test_ab_compares_the_working_tree_with_a_git_revision_at_toy_size():
    spec = importlib.util.spec_from_file_location("bench_ab", BENCH.parent / "ab.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    (line,) = module.main(["HEAD", "--configs", "tiny", "--rounds", "1", "--min-seconds", "0"])
    assert line.startswith("tiny train: HEAD ") and " ratio " in line


def test_population_bench_runs_at_toy_size(tmp_path):
    """experiments/bench/population.py (populations vs runs one after another) end to end."""
    spec = importlib.util.spec_from_file_location("bench_population",
                                                  BENCH.parent / "population.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    text = module.main(["--config", "base", "--members", "1,2", "--rounds", "1", "--windows",
                        "1", "--log-every", "2", "--out", str(tmp_path / "p.md"),
                        "--config.model.hidden_size=8", "--config.data.batch_size=4",
                        "--config.data.seq_len=8"])
    assert "| 2 |" in text and "speedup" in text and (tmp_path / "p.md").read_text() == text
