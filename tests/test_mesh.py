"""Every mesh gives the one-device numbers: data parallel (all three BPTT regimes),
populations split over devices, and a resume on another mesh shape (float64, to 1e-12).

The runs happen in one subprocess with 4 forced CPU devices (the rest of the suite keeps
its one device); the tests compare the run folders it leaves.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest

from jax_lm import config as config_lib
from jax_lm import mesh as mesh_lib
from jax_lm import rundir, runs

from tests.test_train import TEXT

ROOT = Path(__file__).resolve().parents[1]

DRIVER = textwrap.dedent('''
    import json, os, signal, sys
    import jax
    jax.config.update("jax_enable_x64", True)
    from jax_lm import callbacks, config as config_lib, loop
    assert jax.device_count() == 4, jax.devices()

    class StopAt(callbacks.Callback):  # SIGINT while step `step` is logged: save and stop
        def __init__(self, step):
            self.step = step
        def on_record(self, member, record):
            if member == 0 and record.get("step") == self.step and "train_loss" in record:
                os.kill(os.getpid(), signal.SIGINT)

    for job in json.load(open(sys.argv[1])):
        configs = [config_lib.apply_overrides(config_lib.get_config(), o) for o in job["configs"]]
        stop = [StopAt(job["stop_at"])] if job.get("stop_at") else []
        try:
            loop.fit_population(configs, job["dirs"], resume=job.get("resume", False),
                                callbacks=stop, print_fn=lambda _: None)
        except loop.Interrupted:
            assert job.get("stop_at")
''')

REGIMES = {  # regime: overrides; "full" reads padded sentences, the others the stream
    "truncated": {"train.regime": "truncated", "model.dropout": "0.1"},
    "full": {"train.regime": "full", "data.batcher": "sentences", "model.dropout": "0.1"},
    "window": {"train.regime": "window", "train.window_k": "2"},
}
MEMBERS = [{"seed": str(seed), "train.learning_rate": lr} for lr in ("0.01", "0.03")
           for seed in (1, 2)]
POPULATION_MESHES = [(1, 1), (2, 2), (4, 1)]


def _base(corpus: Path, cache: Path, **overrides) -> dict:
    return {"data.source": str(corpus), "data.cache_dir": str(cache), "data.batch_size": "4",
            "data.seq_len": "8", "model.hidden_size": "8", "model.param_dtype": "float64",
            "train.epochs": "1", "train.max_steps": "8", "train.log_every": "1",
            "train.optimizer": "adam", "train.clip_norm": "1.0", "sample.num_samples": "0",
            **overrides}


def _mesh(population: int, data: int) -> dict:
    return {"mesh.population": str(population), "mesh.data": str(data)}


@pytest.fixture(scope="module")
def runs_on_4_devices(tmp_path_factory):
    """Run folders of every case, trained in one subprocess that sees 4 CPU devices."""
    root = tmp_path_factory.mktemp("mesh")
    corpus = root / "tiny.txt"
    corpus.write_text(TEXT)
    base = lambda **o: _base(corpus, root / "cache", **o)  # noqa: E731
    jobs = []
    for regime, options in REGIMES.items():
        for data in (1, 4):
            jobs.append({"configs": [base(**options, **_mesh(1, data))],
                         "dirs": [str(root / f"{regime}-1x{data}")]})
    for i, member in enumerate(MEMBERS):
        jobs.append({"configs": [base(**member)], "dirs": [str(root / f"one-{i}")]})
    for p, d in POPULATION_MESHES:
        jobs.append({"configs": [base(**m, **_mesh(p, d)) for m in MEMBERS],
                     "dirs": [str(root / f"pop{p}x{d}-{i}") for i in range(len(MEMBERS))]})
    # A resume on another mesh: stopped at step 3 on one shape, finished on another.
    cut = {"configs": [base(**m, **_mesh(2, 2)) for m in MEMBERS],
           "dirs": [str(root / f"moved-{i}") for i in range(len(MEMBERS))], "stop_at": 3}
    jobs += [cut, {**cut, "configs": [base(**m, **_mesh(1, 4)) for m in MEMBERS],
                   "stop_at": None, "resume": True}]
    single = {"configs": [base(**REGIMES["truncated"], **_mesh(1, 4))],
              "dirs": [str(root / "moved-single")], "stop_at": 3}
    jobs += [single, {**single, "configs": [base(**REGIMES["truncated"], **_mesh(1, 2))],
                      "stop_at": None, "resume": True}]
    (root / "jobs.json").write_text(json.dumps(jobs))
    (root / "driver.py").write_text(DRIVER)
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    done = subprocess.run([sys.executable, str(root / "driver.py"), str(root / "jobs.json")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return root


def _losses(run_dir: Path) -> list[float]:
    return [r["train_loss"] for r in rundir.read_records(run_dir / rundir.METRICS)
            if "train_loss" in r]


def _final(run_dir: Path) -> dict:
    return [r for r in rundir.read_records(run_dir / rundir.METRICS) if r.get("final")][-1]


def assert_same_run(a: Path, b: Path) -> None:
    """Same training losses at every step, same final scores and parameters (1e-12)."""
    la, lb = _losses(a), _losses(b)
    assert len(la) == len(lb) == 8
    np.testing.assert_allclose(la, lb, rtol=1e-12)
    assert _final(a)["valid_nll"] == pytest.approx(_final(b)["valid_nll"], rel=1e-12)
    for x, y in zip(jax.tree.leaves(runs.load_run(a, "latest").params),
                    jax.tree.leaves(runs.load_run(b, "latest").params)):
        np.testing.assert_allclose(x, y, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("regime", sorted(REGIMES))
def test_data_parallel_over_4_devices_equals_one_device(runs_on_4_devices, regime):
    assert_same_run(runs_on_4_devices / f"{regime}-1x4", runs_on_4_devices / f"{regime}-1x1")
    assert _losses(runs_on_4_devices / f"{regime}-1x1")[-1] < _losses(
        runs_on_4_devices / f"{regime}-1x1")[0]  # it trains


@pytest.mark.parametrize("population, data", POPULATION_MESHES)
def test_a_population_on_any_mesh_equals_its_members_run_one_by_one(
        runs_on_4_devices, population, data):
    for i in range(len(MEMBERS)):
        assert_same_run(runs_on_4_devices / f"pop{population}x{data}-{i}",
                        runs_on_4_devices / f"one-{i}")
    finals = {_final(runs_on_4_devices / f"one-{i}")["valid_nll"] for i in range(len(MEMBERS))}
    assert len(finals) == len(MEMBERS)  # the members differ (seed, learning rate)


def test_a_run_resumes_on_another_mesh_shape(runs_on_4_devices):
    stopped = [r for r in rundir.read_records(runs_on_4_devices / "moved-0" / rundir.METRICS)]
    assert any(r.get("step") == 3 for r in stopped)
    for i in range(len(MEMBERS)):  # 2×2, then 1×4
        assert_same_run(runs_on_4_devices / f"moved-{i}", runs_on_4_devices / f"one-{i}")
    # a single run: 1×4, then 1×2
    assert_same_run(runs_on_4_devices / "moved-single", runs_on_4_devices / "truncated-1x1")


def test_a_mesh_larger_than_the_devices_or_rows_that_do_not_split_are_refused():
    with pytest.raises(mesh_lib.MeshError, match="needs 4 devices, but there are 1"):
        mesh_lib.make_mesh(2, 2)
    with pytest.raises(mesh_lib.MeshError, match="at most one axis"):
        mesh_lib.make_mesh(0, 0)
    assert mesh_lib.mesh_shape(0, 2, 8) == (4, 2) and mesh_lib.mesh_shape(1, 0, 8) == (1, 8)
    assert mesh_lib.mesh_shape(0, 1, 8, members=6) == (6, 1)  # as many as divide the members
    assert mesh_lib.mesh_shape(0, 2, 8, members=6) == (3, 2)
    assert mesh_lib.mesh_shape(0, 1, 8, members=1) == (1, 1)
    config = config_lib.apply_overrides(config_lib.get_config(),
                                        {"data.batch_size": "6", "mesh.data": "4"})
    with pytest.raises(config_lib.ConfigError, match="data.batch_size=6 must be a multiple of "
                       "mesh.data=4"):
        config_lib.resolve(config)
