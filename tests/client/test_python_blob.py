"""The Python SDK's pure-Python blob codec (wasm-make/python/datajoint_blob.py, what Python make
functions decode and encode with) against datajoint-python 2.3.5's own blob.pack / unpack: every
fixture blob decodes to the same values, and values the SDK represents exactly re-encode to the
same bytes."""

import json
import sys

import numpy as np
import pytest
from datajoint import blob as djblob

from conftest import REPO

sys.path.insert(0, str(REPO / "wasm-make" / "python"))
import datajoint_blob as sdk  # noqa: E402

FIXTURES = json.loads((REPO / "core" / "tests" / "fixtures" / "blob" / "blobs.json").read_text())

# Values the SDK gives in another form than numpy's (structs, records, object and char arrays,
# complex arrays as lists): decoded and compared, but not re-encoded byte for byte.
NOT_REPACKED = {"complex_array", "complex64_array", "str_array", "object_array", "char_array", "set"}


def same(ours, theirs):
    if isinstance(ours, sdk.Array):
        theirs = np.asarray(theirs)
        assert ours.dtype == str(theirs.dtype) and ours.shape == theirs.shape
        np.testing.assert_array_equal(ours.to_numpy(), theirs)
    elif isinstance(theirs, np.ndarray) and theirs.dtype == object:
        assert len(ours) == theirs.size
        for o, t in zip(ours, theirs.flatten(order="F")):
            same(o, t)
    elif isinstance(theirs, np.ndarray) and theirs.dtype.kind in "SU":
        assert "".join(ours) if isinstance(ours, list) else ours == "".join(theirs.astype(str).flatten())
    elif isinstance(theirs, np.ndarray) and theirs.dtype.kind == "c":
        assert ours == list(theirs.flatten(order="F"))
    elif isinstance(theirs, np.ndarray) and theirs.dtype.names:
        # A struct array: a list of dicts; a record array: a dict of field arrays.
        fields = ours[0].keys() if isinstance(ours, list) else ours.keys()
        assert set(fields) == set(theirs.dtype.names)
    elif isinstance(theirs, (list, tuple)):
        assert type(ours) is type(theirs) and len(ours) == len(theirs)
        for o, t in zip(ours, theirs):
            same(o, t)
    elif isinstance(theirs, dict):
        assert ours.keys() == theirs.keys()
        for k in theirs:
            same(ours[k], theirs[k])
    elif isinstance(theirs, float) and theirs != theirs:
        assert ours != ours
    else:
        assert ours == theirs


@pytest.mark.parametrize("case", FIXTURES, ids=[c["name"] for c in FIXTURES])
def test_the_sdk_decodes_what_datajoint_python_packs(case):
    packed = bytes.fromhex(case["hex"])
    ours = sdk.unpack(packed)
    theirs = djblob.unpack(packed)
    same(ours, theirs)
    if case["repacks_same"] and case["name"] not in NOT_REPACKED and not isinstance(theirs, np.ndarray) or (
        isinstance(ours, sdk.Array) and case["repacks_same"]
    ):
        assert sdk.pack(ours) == packed, case["name"]


def test_arrays_the_sdk_builds_are_what_numpy_would_pack():
    values = [float(i % 97) / 7 for i in range(20_000)]  # compressed
    a = sdk.Array("float64", (100, 200), values)
    packed = sdk.pack(a)
    assert packed.startswith(b"ZL123\0")
    np.testing.assert_array_equal(djblob.unpack(packed), np.array(values).reshape((100, 200), order="F"))
    assert packed == djblob.pack(np.array(values).reshape((100, 200), order="F"))
    ints = sdk.Array("int16", (3,), [1, -2, 3])
    assert sdk.pack(ints) == djblob.pack(np.array([1, -2, 3], dtype="int16"))
    nested = {"a": [1, 2.5, "x", None], "b": (True, b"\x00"), "n": -(2**70)}
    assert sdk.pack(nested) == djblob.pack(nested)
    with pytest.raises(sdk.BlobError):
        sdk.unpack(b"mYm\0A" + b"\xff" * 8)
    with pytest.raises(sdk.BlobError):
        sdk.Array("float64", (2, 2), [1.0])
    # Elements of another type are converted to the dtype's.
    import array

    assert sdk.pack(sdk.Array("float32", (2,), array.array("d", [1.0, 2.5]))) == djblob.pack(
        np.array([1.0, 2.5], dtype="float32")
    )
    # Damage is a BlobError, whatever it is.
    for damaged in [b"ZL123\0\x01", b"ZL123\0" + b"\x10" * 8 + b"junk", b"dj0\0\x0a\x00\x00", b"dj0\0t" + (20241399).to_bytes(4, "little") + b"\xff" * 8]:
        with pytest.raises(sdk.BlobError):
            sdk.unpack(damaged)
    with pytest.raises(sdk.BlobError):
        sdk.pack(1 << (8 * 70_000))
