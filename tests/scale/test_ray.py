"""The Ray pool on a real local cluster: results in submission order, a worker's own error re-raised as is, a batch
whose worker keeps dying ends the run, and `--ray` with an address nothing answers at is one `error:` line, exit 2."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from functools import partial
from importlib.util import find_spec

import pytest
import yaml

from fslm.errors import DataError, InputError, ModelNotFoundError

pytestmark = pytest.mark.skipif(find_spec("ray") is None, reason="ray is not installed: pip install 'fslm[ray]'")
FSLM = [sys.executable, "-c", "from fslm.cli import main; main()"]


@pytest.fixture(scope="module", autouse=True)
def shipped_by_value():
    """Ray workers cannot import this test module by name: ship its workers' code by value."""
    if find_spec("ray") is not None:
        from ray import cloudpickle

        cloudpickle.register_pickle_by_value(sys.modules[__name__])


class Echo:
    """A worker that answers out of order (later payloads sleep less) and fails where told."""

    def __init__(self, fail_on: int | None = None, die_on: int | None = None):
        self.fail_on, self.die_on = fail_on, die_on

    def __call__(self, x: int) -> tuple[int, int]:
        if x == self.die_on:
            os._exit(1)  # the worker process dies, as under the OOM killer
        if x == self.fail_on:
            raise DataError(f"record {x}: bad")
        time.sleep(0.05 * (5 - x % 5))
        return x, os.getpid()


def cannot_build():
    raise ModelNotFoundError("no model 'nope' here")


@pytest.mark.timeout(120)
def test_results_come_back_in_submission_order_from_every_actor(ray_cluster):
    from fslm.scale.ray import RayPool

    with RayPool(Echo, 3) as pool:  # more actors than the cluster's 2 CPUs: each gets a share, none waits forever
        results = list(pool.map(list(range(10))))
    assert [x for x, _ in results] == list(range(10))
    assert len({pid for _, pid in results}) == 3 and pool.resubmitted == 0


def test_a_workers_own_error_is_reraised_unchanged(ray_cluster):
    from fslm.scale.ray import RayPool

    with RayPool(partial(Echo, fail_on=3), 2) as pool, pytest.raises(DataError, match="record 3: bad"):
        list(pool.map(list(range(6))))
    with RayPool(cannot_build, 1) as pool, pytest.raises(ModelNotFoundError, match="no model 'nope'"):
        pool.ask(lambda worker: worker)


def test_a_batch_whose_worker_keeps_dying_ends_the_run(ray_cluster):
    from fslm.scale.ray import ATTEMPTS, RayPool, WorkerLostError

    done = []
    with RayPool(partial(Echo, die_on=2), 2) as pool, pytest.raises(WorkerLostError, match="batch 3 of 5"):
        for x, _ in pool.map(list(range(5))):
            done.append(x)
    # batches queued on a dying actor die with it (and may have been queued behind batch 3), so fewer may come back;
    # never one past it, never out of order
    assert done == list(range(len(done))) and len(done) <= 2
    assert pool.resubmitted >= ATTEMPTS - 1


def test_addresses_that_are_not_a_ray_head(ray_cluster):
    from fslm.scale.ray import _check_reachable

    with pytest.raises(InputError, match="expected HOST:PORT"):
        _check_reachable("localhost")
    with pytest.raises(InputError, match="nothing answers there"):
        _check_reachable("127.0.0.1:1")
    with socket.socket() as server:  # an HTTP/1 server, say: ray.init would retry against it for minutes
        server.bind(("127.0.0.1", 0))
        server.listen()
        answer = threading.Thread(target=lambda: server.accept()[0].sendall(b"HTTP/1.0 400 Bad Request\r\n\r\n"))
        answer.start()
        with pytest.raises(InputError, match="a server answers there, but not a Ray head"):
            _check_reachable(f"127.0.0.1:{server.getsockname()[1]}")
        answer.join()
    _check_reachable(ray_cluster.get_runtime_context().gcs_address)  # the real head passes


def test_the_cli_with_an_unreachable_ray_address_prints_one_error_and_exits_2(tiny_model_dir, tmp_path):
    (tmp_path / "data" / "arc_easy").mkdir(parents=True)
    record = {"query": "Question: 1+1?", "choices": ["2", "3"], "gold": 0}
    (tmp_path / "data" / "arc_easy" / "arc_easy.jsonl").write_text(json.dumps(record) + "\n")
    stack = tmp_path / "stack.yaml"
    stages = [{"name": "facts", "instruction": "Facts."}, {"name": "answer", "instruction": "Answer."}]
    stack.write_text(yaml.safe_dump({"name": "tiny", "base_model": str(tiny_model_dir), "stages": stages}))
    env = {**os.environ, "FSLM_DATA_DIR": str(tmp_path / "data"), "RAY_ADDRESS": ""}
    for verb in (
        ["eval", "--model", str(tiny_model_dir), "--tasks", "arc_easy", "--ray", "127.0.0.1:1"],
        ["distill", "--stack", str(stack), "--out", str(tmp_path / "d.jsonl"), "--ray", "127.0.0.1:1"],
    ):
        done = subprocess.run(FSLM + verb, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 2, done.stderr[-2000:]
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: --ray 127.0.0.1:1: nothing answers there"), lines
