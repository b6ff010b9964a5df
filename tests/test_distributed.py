"""Two processes on localhost (jax.distributed, gloo CPU collectives, one device each) train
as one data-parallel run: the same losses and parameters as one process (float64, 1e-12),
and they stop together and resume exactly, even when only one of them is signalled."""

import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest

from jax_lm import checkpoint, loop, rundir, runs
from jax_lm import config as config_lib

from tests.test_train import TEXT

ROOT = Path(__file__).resolve().parents[1]

# The command line, with SIGTERM sent to this process at its Nth metrics sync when asked.
DRIVER = textwrap.dedent('''
    import os, signal, sys
    from jax_lm import cli, loop
    stop_at = int(os.environ.get("STOP_AT_SYNC", "0"))
    if stop_at:
        real, calls = loop._Loop._sync, []
        def sync(self, *args, **kwargs):
            calls.append(1)
            if len(calls) == stop_at:
                os.kill(os.getpid(), signal.SIGTERM)
            return real(self, *args, **kwargs)
        loop._Loop._sync = sync
    sys.exit(cli.main(sys.argv[1:]))
''')


def _overrides(corpus: Path, cache: Path) -> dict[str, str]:
    return {"data.source": str(corpus), "data.cache_dir": str(cache), "data.batch_size": "4",
            "data.seq_len": "8", "model.hidden_size": "8", "model.param_dtype": "float64",
            "model.dropout": "0.1", "train.max_steps": "10", "train.log_every": "2",
            "train.optimizer": "adam", "sample.num_samples": "0"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _two_processes(root: Path, args: list[str], stop_process_1_at: int = 0) -> list:
    """Run `jax-lm train ARGS` as processes 0 and 1 of one run; their CompletedProcess-like
    (returncode, stderr) pairs."""
    (root / "driver.py").write_text(DRIVER)
    port = _free_port()
    procs = []
    for rank in (0, 1):
        env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "",
               "STOP_AT_SYNC": str(stop_process_1_at if rank == 1 else 0)}
        procs.append(subprocess.Popen(
            [sys.executable, str(root / "driver.py"), "train", *args, "--no-progress",
             "--coordinator", f"localhost:{port}", "--num-processes", "2",
             "--process-id", str(rank)],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    try:
        outs = [p.communicate(timeout=240) for p in procs]
    finally:
        for p in procs:
            p.kill()
    return [(p.returncode, err) for p, (_, err) in zip(procs, outs)]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("distributed")
    (root / "tiny.txt").write_text(TEXT)
    overrides = _overrides(root / "tiny.txt", root / "cache")
    config = config_lib.apply_overrides(config_lib.get_config(), overrides)
    loop.fit(config, root / "one", progress=False, print_fn=lambda _: None)  # 1 process
    return root, overrides


def _args(overrides: dict[str, str]) -> list[str]:
    return [f"--config.{k}={v}" for k, v in overrides.items()]


def _losses(run_dir: Path) -> list[float]:
    return [r["train_loss"] for r in rundir.read_records(run_dir / rundir.METRICS)
            if "train_loss" in r]


def assert_same_run(a: Path, b: Path) -> None:
    assert len(_losses(a)) == len(_losses(b)) == 5
    np.testing.assert_allclose(_losses(a), _losses(b), rtol=1e-12)
    for x, y in zip(jax.tree.leaves(runs.load_run(a, "latest").params),
                    jax.tree.leaves(runs.load_run(b, "latest").params)):
        np.testing.assert_allclose(x, y, rtol=1e-12, atol=1e-14)


def test_two_processes_train_like_one(setup):
    root, overrides = setup
    done = _two_processes(root, ["--workdir", str(root / "two"), *_args(overrides),
                                 "--config.mesh.data=2"])
    assert [code for code, _ in done] == [0, 0], done[0][1][-2000:] + done[1][1][-2000:]
    assert_same_run(root / "two", root / "one")
    written = sorted(p.name for p in (root / "two").iterdir())
    assert "config.json" in written and "metrics.jsonl" in written


def test_a_signal_to_one_process_stops_both_and_two_processes_resume_exactly(setup):
    root, overrides = setup
    run = root / "stopped"
    done = _two_processes(root, ["--workdir", str(run), *_args(overrides),
                                 "--config.mesh.data=2"], stop_process_1_at=2)
    assert [code for code, _ in done] == [143, 143], done[0][1][-2000:] + done[1][1][-2000:]
    assert "resume with: jax-lm train --resume" in done[0][1]
    stopped_at = checkpoint.saved_steps(run)[-1]
    assert 0 < stopped_at < 10
    done = _two_processes(root, ["--resume", str(run)])
    assert [code for code, _ in done] == [0, 0], done[0][1][-2000:] + done[1][1][-2000:]
    assert_same_run(run, root / "one")


def test_a_two_process_run_resumes_in_one_process(setup):
    root, overrides = setup
    run = root / "moved"
    done = _two_processes(root, ["--workdir", str(run), *_args(overrides),
                                 "--config.mesh.data=2"], stop_process_1_at=1)
    assert [code for code, _ in done] == [143, 143], done[0][1][-2000:] + done[1][1][-2000:]
    config = config_lib.apply_overrides(runs.read_config(run), {"mesh.data": "1"})
    loop.fit(config, run, resume=True, progress=False, print_fn=lambda _: None)
    assert_same_run(run, root / "one")


def test_process_flags_given_in_part_are_one_sentence(capsys):
    from jax_lm import cli

    assert cli.main(["train", "--coordinator", "localhost:1", "--num-processes", "2"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("jax-lm: error: --coordinator, --num-processes and --process-id go "
                          "together") and err.count("\n") == 1


def test_a_cluster_is_joined_only_when_the_environment_says_so(monkeypatch):
    from jax_lm import mesh as mesh_lib

    for name in ("SLURM_NTASKS", "TPU_WORKER_HOSTNAMES", "JAX_COORDINATOR_ADDRESS"):
        monkeypatch.delenv(name, raising=False)
    assert mesh_lib.cluster_environment() is None
    assert mesh_lib.join_processes() is False  # a lone process: nothing to join
    monkeypatch.setenv("SLURM_NTASKS", "1")
    assert mesh_lib.cluster_environment() is None
    monkeypatch.setenv("SLURM_NTASKS", "4")
    assert mesh_lib.cluster_environment() == "SLURM"
    with pytest.raises(mesh_lib.MeshError, match="must be in"):
        mesh_lib.join_processes("localhost:1", 2, 2)


def test_a_peer_that_stopped_is_one_sentence_not_a_bug_report():
    from jax_lm import cli

    err = RuntimeError("UNKNOWN: Gloo context initialization failed: DEADLINE_EXCEEDED: "
                       "GetKeyValue() timed out [type.googleapis.com/tensorflow."
                       "CoordinationServiceError='']")
    message = cli.describe_error(err)
    assert message.startswith("another process of this multi-process run stopped")
    assert cli.describe_error(RuntimeError("something else")) is None
