"""Tests for tools/convert_torch_weights/t7.py: the Torch7 binary format, read and written."""

import struct

import numpy as np
import pytest

from densecap_jax.convert import t7


def _int(v):
  return struct.pack("<i", v)


def _long(v):
  return struct.pack("<q", v)


def _string(s):
  return _int(len(s)) + s


def _float_tensor_bytes():
  """Hand-assembled ``torch.save({w = <2x3 view at offset 1 of a 8-element FloatStorage>})``."""
  storage = (_int(t7.TYPE_TORCH) + _int(3) + _string(b"V 1") + _string(b"torch.FloatStorage")
             + _long(8) + np.arange(8, dtype="<f4").tobytes())
  tensor = (_int(t7.TYPE_TORCH) + _int(2) + _string(b"V 1") + _string(b"torch.FloatTensor")
            + _int(2) + _long(2) + _long(3) + _long(1) + _long(2) + _long(2) + storage)
  return (_int(t7.TYPE_TABLE) + _int(1) + _int(1)
          + _int(t7.TYPE_STRING) + _string(b"w") + tensor)


def test_reads_hand_assembled_tensor_with_offset_and_strides():
  # sizes (2, 3), strides (1, 2), 1-based offset 2: element (i, j) = storage[1 + i + 2j].
  w = t7.loads(_float_tensor_bytes())["w"]
  np.testing.assert_array_equal(w, [[1, 3, 5], [2, 4, 6]])
  assert w.dtype == np.float32 and not w.flags.writeable


def test_writer_produces_the_hand_assembled_bytes():
  storage = np.arange(8, dtype=np.float32)
  tree = {"w": t7.Tensor(storage, 1, (2, 3), (1, 2))}
  assert t7.dumps(tree) == _float_tensor_bytes()


def test_scalars_strings_booleans_and_nil():
  data = (_int(t7.TYPE_TABLE) + _int(1) + _int(5)
          + _int(t7.TYPE_STRING) + _string(b"n") + _int(t7.TYPE_NUMBER) + struct.pack("<d", 15.0)
          + _int(t7.TYPE_STRING) + _string(b"x") + _int(t7.TYPE_NUMBER) + struct.pack("<d", 0.5)
          + _int(t7.TYPE_NUMBER) + struct.pack("<d", 1.0) + _int(t7.TYPE_BOOLEAN) + _int(1)
          + _int(t7.TYPE_STRING) + _string(b"raw") + _int(t7.TYPE_STRING) + _string(b"\xff\xfe")
          + _int(t7.TYPE_STRING) + _string(b"none") + _int(t7.TYPE_NIL))
  value = t7.loads(data)
  assert value == {"n": 15, "x": 0.5, 1: True, "raw": b"\xff\xfe", "none": None}
  assert isinstance(value["n"], int) and isinstance(value["x"], float)


def test_legacy_object_without_version_string():
  data = (_int(t7.TYPE_TORCH) + _int(1) + _string(b"nn.Identity")
          + _int(t7.TYPE_TABLE) + _int(2) + _int(0))
  obj = t7.loads(data)
  assert (obj.class_name, obj.version, obj.fields) == ("nn.Identity", 0, {})


def test_function_is_kept_as_bytecode():
  upvalues = _int(t7.TYPE_TABLE) + _int(2) + _int(0)
  data = (_int(t7.TYPE_TABLE) + _int(1) + _int(2)
          + _int(t7.TYPE_STRING) + _string(b"f") + _int(t7.TYPE_FUNCTION) + _string(b"\x1bLJ")
          + upvalues
          + _int(t7.TYPE_STRING) + _string(b"g") + _int(t7.TYPE_RECUR_FUNCTION) + _int(3)
          + _string(b"\x1bLJ2") + _int(t7.TYPE_TABLE) + _int(4) + _int(0))
  value = t7.loads(data)
  assert isinstance(value["f"], t7.LuaFunction) and value["f"].bytecode == b"\x1bLJ"
  assert value["g"].bytecode == b"\x1bLJ2" and value["g"].upvalues == {}


def test_round_trip_keeps_references_cycles_and_table_keys():
  storage = np.arange(12, dtype=np.float32)
  weight = t7.Tensor(storage, 0, (2, 4), (4, 1))
  bias = t7.Tensor(storage, 8, (4,), (1,))
  linear = t7.TorchObject("nn.Linear", {"weight": weight, "bias": bias})
  data_table = {"module": linear}
  node = t7.TorchObject("nngraph.Node", {"data": data_table, "children": []})
  node["children"].append(node)  # a cycle
  data_table["mapindex"] = {t7.Ref(data_table): 1, 1: data_table}
  tree = {"a": linear, "b": [linear, node], "long": np.array([3, -1], np.int64),
          "cuda": t7.Tensor(t7.Storage(np.ones(3, np.float32), "torch.CudaStorage"), 0, (3,),
                            (1,), "torch.CudaTensor"),
          "empty": t7.Tensor(None, 0, (), ())}

  data = t7.dumps(tree)
  assert data.count(b"torch.FloatStorage") == 1 and data.count(b"nn.Linear") == 1
  back = t7.loads(data)
  lin = back["a"]
  assert back["b"][1] is lin and isinstance(lin, t7.TorchObject)
  np.testing.assert_array_equal(lin["weight"], storage[:8].reshape(2, 4))
  np.testing.assert_array_equal(lin["bias"], storage[8:])
  address = lambda a: a.__array_interface__["data"][0]
  assert address(lin["bias"]) - address(lin["weight"]) == 8 * 4  # views of one storage
  node_back = back["b"][2]
  assert node_back["children"][1] is node_back
  mapindex = node_back["data"]["mapindex"]
  (ref,) = [k for k in mapindex if isinstance(k, t7.Ref)]
  assert ref.value is node_back["data"] and mapindex[1] is node_back["data"]
  np.testing.assert_array_equal(back["long"], [3, -1])
  assert back["long"].dtype == np.int64
  np.testing.assert_array_equal(back["cuda"], [1, 1, 1])
  assert back["cuda"].dtype == np.float32
  assert back["empty"].shape == (0,)


def test_sequence():
  assert t7.sequence({1: "a", 2: "b"}) == ["a", "b"]
  with pytest.raises(ValueError, match="not a Lua list"):
    t7.sequence({1: "a", 3: "b"}, "modules")


@pytest.mark.parametrize("cut", [1, 10, 30, 60, -3])
def test_truncated_data_is_refused_with_a_clear_message(cut):
  data = _float_tensor_bytes()
  with pytest.raises(ValueError, match=r"^<bytes>: truncated: .* \(at byte \d+\)$"):
    t7.loads(data[:cut])


def test_tensor_reaching_outside_its_storage_is_refused():
  tree = {"w": t7.Tensor(np.zeros(5, np.float32), 2, (2, 2), (2, 1))}
  with pytest.raises(ValueError, match="reaches element 5 of a storage of 5"):
    t7.loads(t7.dumps(tree))


def test_unknown_type_tag_and_trailing_bytes():
  with pytest.raises(ValueError, match="unknown type tag 9"):
    t7.loads(_int(9))
  with pytest.raises(ValueError, match="2 unread bytes"):
    t7.loads(_int(t7.TYPE_NIL) + b"\0\0")


def test_file_round_trip(tmp_path):
  path = tmp_path / "x.t7"
  t7.save(path, {"opt": {"seq_length": 15, "idx_to_token": ["a", "b"]}})
  assert t7.load(path) == {"opt": {"seq_length": 15, "idx_to_token": {1: "a", 2: "b"}}}
