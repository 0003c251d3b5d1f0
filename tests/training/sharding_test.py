"""Mesh construction, logical-axis rules and batch sharding."""

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

import training_helpers
from transformer import sharding


def test_emulated_devices_are_present():
  assert jax.device_count() == 8


@pytest.mark.parametrize("cfg, expected", [
    (sharding.MeshConfig(), (8, 1, 1)),
    (sharding.MeshConfig(data=2, fsdp=-1), (2, 4, 1)),
    (sharding.MeshConfig(data=-1, fsdp=2, tensor=2), (2, 2, 2)),
])
def test_resolve_mesh_shape(cfg, expected):
  assert sharding.resolve_mesh_shape(cfg, 8) == expected


@pytest.mark.parametrize("cfg, match", [
    (sharding.MeshConfig(data=-1, fsdp=-1), "at most one"),
    (sharding.MeshConfig(data=4, fsdp=4), "needs 16 devices"),
    (sharding.MeshConfig(data=-1, fsdp=3), "not divisible"),
    (sharding.MeshConfig(data=0), "positive"),
])
def test_bad_mesh_is_a_clear_error(cfg, match):
  with pytest.raises(ValueError, match=match):
    sharding.resolve_mesh_shape(cfg, 8)


def test_mesh_may_use_fewer_devices():
  mesh = sharding.make_mesh(sharding.MeshConfig(data=2))
  assert mesh.size == 2 and dict(mesh.shape) == {"data": 2, "fsdp": 1, "tensor": 1}


def test_logical_rules_shard_only_divisible_dims_once():
  mesh = sharding.make_mesh(sharding.MeshConfig(data=1, fsdp=4, tensor=2))
  assert sharding.logical_to_mesh_spec(("embed", "mlp"), (32, 64), mesh) == P("fsdp", "tensor")
  # 30 is not divisible by fsdp=4: replicated on that dim.
  assert sharding.logical_to_mesh_spec(("embed", "mlp"), (30, 64), mesh) == P(None, "tensor")
  # A mesh axis is used at most once per array.
  assert sharding.logical_to_mesh_spec(("embed", "embed"), (32, 32), mesh) == P("fsdp", None)
  assert sharding.logical_to_mesh_spec(("kv", None), (8, 8), mesh) == P(None, None)


def test_default_mesh_replicates_parameters_and_fsdp_shards_them():
  replicated = training_helpers.make_setup(sharding.MeshConfig())
  specs = {s.spec for s in jax.tree.leaves(replicated.state_shardings.params)}
  assert specs <= {P(), P(None), P(None, None), P(None, None, None)}
  fsdp = training_helpers.make_setup(sharding.MeshConfig(data=2, fsdp=4))
  shardings = fsdp.state_shardings

  def embedding_table(tree):  # The (V, D) = ("vocab", "embed") token embedding.
    found = [leaf for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
             if "embedding" in jax.tree_util.keystr(path) and "table" in jax.tree_util.keystr(path)]
    assert found, "no embedding table found"
    return found[0]

  assert embedding_table(shardings.params).spec == P(None, "fsdp")
  # Adam moments follow their parameters.
  assert embedding_table(shardings.opt_state[0].mu).spec == P(None, "fsdp")
  state = fsdp.init_state()
  assert embedding_table(state.params).addressable_shards[0].data.shape == (32, 8)


def test_make_global_batch_splits_rows_and_rejects_indivisible_batches():
  mesh = sharding.make_mesh(sharding.MeshConfig())
  batch = sharding.make_global_batch({"inputs": np.arange(16 * 3).reshape(16, 3)}, mesh)
  assert batch["inputs"].shape == (16, 3)
  assert batch["inputs"].sharding.spec == P(("data", "fsdp"))
  assert len(batch["inputs"].addressable_shards) == 8
  with pytest.raises(ValueError, match="not divisible"):
    sharding.make_global_batch({"inputs": np.zeros((12, 3))}, mesh)
