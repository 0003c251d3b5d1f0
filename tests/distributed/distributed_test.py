"""When train.py initializes jax.distributed (pure decisions on fake environments), the
process-local pieces of multi-process runs in one process, and the errors for bad settings."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from transformer import checkpointing
from transformer import distributed
from transformer import sharding
from transformer.training import loop
from transformer.training import errors

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SLURM_4_TASKS = {"SLURM_JOB_ID": "123", "SLURM_STEP_NODELIST": "node[001-004]",
                 "SLURM_NTASKS": "4", "SLURM_PROCID": "2", "SLURM_LOCALID": "0"}


def _plan(mode="auto", environ=None, cloud_tpu_processes=0, **kwargs):
  return distributed.plan(mode, environ=environ or {}, cloud_tpu_processes=cloud_tpu_processes,
                          **kwargs)


def test_a_single_process_initializes_nothing():
  assert not _plan().initialize
  assert not _plan(num_processes=1).initialize
  assert not _plan(environ={**SLURM_4_TASKS, "SLURM_NTASKS": "1"}).initialize
  assert not _plan(cloud_tpu_processes=1).initialize  # A Colab / single-host TPU VM.
  assert not _plan("off", environ=SLURM_4_TASKS).initialize


def test_explicit_settings_from_flags_or_environment():
  plan = _plan(coordinator_address="10.0.0.1:1234", num_processes=2, process_id=1,
               local_device_ids=[0, 1])
  assert plan.initialize
  assert (plan.coordinator_address, plan.num_processes, plan.process_id,
          plan.local_device_ids) == ("10.0.0.1:1234", 2, 1, (0, 1))
  plan = _plan(environ={"JAX_COORDINATOR_ADDRESS": "host:99", "JAX_NUM_PROCESSES": "3",
                        "JAX_PROCESS_ID": "2"})
  assert plan.initialize and (plan.coordinator_address, plan.num_processes,
                              plan.process_id) == ("host:99", 3, 2)
  # Flags win over the environment.
  plan = _plan(process_id=0, environ={"JAX_COORDINATOR_ADDRESS": "host:99",
                                      "JAX_NUM_PROCESSES": "3", "JAX_PROCESS_ID": "2"})
  assert plan.process_id == 0


@pytest.mark.parametrize("environ, tpu, name", [
    (SLURM_4_TASKS, 0, "SLURM with 4 processes"),
    ({"OMPI_MCA_orte_hnp_uri": "1.2.3.4:5", "OMPI_COMM_WORLD_SIZE": "2"}, 0,
     "Open MPI with 2 processes"),
    ({}, 8, "Cloud TPU slice with 8 processes"),
])
def test_detected_clusters_leave_the_settings_to_jax(environ, tpu, name):
  plan = _plan(environ=environ, cloud_tpu_processes=tpu)
  assert plan.initialize and name in plan.reason
  assert (plan.coordinator_address, plan.num_processes, plan.process_id) == (None, None, None)


def test_mode_on_always_initializes():
  plan = _plan("on")
  assert plan.initialize and plan.num_processes is None


@pytest.mark.parametrize("kwargs, environ, message", [
    (dict(num_processes=2, process_id=2, coordinator_address="h:1"), {},
     r"process_id=2 is not below num_processes=2"),
    (dict(process_id=1), {}, r"process_id=1 is given but coordinator_address and "
     r"num_processes are not"),
    (dict(num_processes=2, process_id=0), {}, r"coordinator_address is not"),
    (dict(num_processes=0), {}, r"num_processes must be >= 1"),
    (dict(process_id=-1), {}, r"process_id must be >= 0"),
    (dict(coordinator_address="10.0.0.1", num_processes=2, process_id=0), {},
     r"must be host:port"),
    ({}, {"JAX_NUM_PROCESSES": "two"}, r"JAX_NUM_PROCESSES='two' is not an integer"),
    (dict(num_processes=2), SLURM_4_TASKS, r"num_processes=2 contradicts the SLURM launch of 4"),
    (dict(num_processes=1, process_id=1), {}, r"process_id=1 is not below num_processes=1"),
])
def test_inconsistent_settings_are_refused(kwargs, environ, message):
  with pytest.raises(distributed.DistributedConfigError, match=message):
    _plan(environ=environ, **kwargs)


def test_unknown_mode_is_refused():
  with pytest.raises(distributed.DistributedConfigError, match="must be one of"):
    _plan("yes")


def test_train_py_reports_bad_distributed_flags():
  result = subprocess.run(
      [sys.executable, "train.py", "--workdir=/tmp/unused", "--num_processes=2",
       "--process_id=2", "--coordinator_address=127.0.0.1:1"],
      cwd=REPO, capture_output=True, text=True, timeout=120,
      env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert result.returncode == 2
  assert "process_id=2 is not below num_processes=2" in result.stderr


def test_one_process_feeds_the_whole_batch():
  mesh = sharding.make_mesh(sharding.MeshConfig(data=4, fsdp=2))
  assert sharding.process_batch_block(mesh) == (0, 1)
  assert [d.id for d in mesh.devices.flat] == sorted(d.id for d in jax.devices())
  rows = np.arange(16, dtype=np.int32) * 10
  np.testing.assert_array_equal(sharding.gather_batch_rows(rows, mesh), rows)
  with pytest.raises(ValueError, match="process 1 has no device in the mesh"):
    sharding.process_batch_block(mesh, process_index=1)


def test_iterator_state_continues_in_another_number_of_processes(tmp_path):
  state = {"next_index": 20}
  for i in range(2):
    (tmp_path / f"process_{i}-of-2.json").write_text(json.dumps(state))
  assert checkpointing._iterator_state_of_other_process_count(str(tmp_path)) == state
  (tmp_path / "process_1-of-2.json").write_text(json.dumps({"next_index": 21}))
  with pytest.raises(ValueError, match="different data-iterator states per process"):
    checkpointing._iterator_state_of_other_process_count(str(tmp_path))
  (tmp_path / "empty").mkdir()
  with pytest.raises(ValueError, match="no data-iterator state"):
    checkpointing._iterator_state_of_other_process_count(str(tmp_path / "empty"))


@pytest.mark.parametrize("workdir, message", [
    ("s3://bucket/run", "the s3:// scheme is not supported"),
    ("gs://", "names no bucket"),
])
def test_a_workdir_url_other_than_a_gcs_bucket_is_refused(workdir, message):
  with pytest.raises(errors.UsageError, match=message):
    loop.train_and_evaluate(_copy_config(), workdir)


def _copy_config():
  sys.path.insert(0, REPO)
  from configs import copy  # pylint: disable=g-import-not-at-top
  return copy.get_config()
