"""Reading the FID Inception's weight files without torch: ``.pth`` and ``.npz``.

* pytorch-fid's released ``pt_inception-2015-12-05-6726825d.pth`` (or any
  ``torch.save`` of the same state dict), in torch's zip format or its older "legacy"
  stream format, read by a restricted unpickler that resolves nothing but
  ``OrderedDict``, torch's storage classes and its tensor/parameter rebuild functions:
  a file that pickles anything else is refused, not loaded;
* an ``.npz`` of the same keys (written by :func:`write_npz`, i.e.
  ``python -m evals.fid_inception W.pth --to-npz W.npz``).

:func:`read_state_dict` gives ``{key: array}`` in torch's layouts; turning it into the
network's flax variables is :func:`evals.features.fid_inception.params_from_state_dict`'s.
"""

from __future__ import annotations

import io
import os
import pickle
import zipfile
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from evals.features.base import GenerationEvalError

WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"


class FIDWeightsError(GenerationEvalError):
    """A weights file that is not (a readable copy of) the FID Inception's weights."""


# BatchNorm's update counter: written by torch >= 0.4.1, never read at inference
IGNORED_SUFFIXES = (".num_batches_tracked",)


# torch's storage classes -> numpy dtypes (what a state dict of tensors can hold)
_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # torch's legacy (pre-1.6) stream format
_LEGACY_PROTOCOL = 1001


class _Storage:
    """A storage reference met while unpickling; its bytes are attached afterwards."""

    def __init__(self, dtype: Any, key: str, numel: int):
        self.dtype, self.key, self.numel = np.dtype(dtype), key, int(numel)
        self.array: np.ndarray | None = None


class _LazyTensor:
    """``_rebuild_tensor_v2``'s arguments, turned into an array once the storages are read."""

    def __init__(self, storage: _Storage, offset: int, size: Sequence[int],
                 stride: Sequence[int]):
        self.storage, self.offset = storage, int(offset)
        self.size, self.stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)

    def materialise(self) -> np.ndarray:
        base = self.storage.array
        if base is None:
            raise ValueError(f"storage {self.storage.key} has no data")
        n = int(np.prod(self.size)) if self.size else 1
        last = self.offset + sum((d - 1) * s for d, s in zip(self.size, self.stride, strict=True)
                                 if d > 0) if n else self.offset
        if n and (self.offset < 0 or last >= base.size):
            raise ValueError(f"a tensor reaches past the end of storage {self.storage.key}")
        item = base.itemsize
        view = np.lib.stride_tricks.as_strided(
            base[self.offset:], shape=self.size, strides=[s * item for s in self.stride])
        return np.array(view)  # a copy: no view of the file's buffer escapes


def _rebuild_tensor(storage, storage_offset, size, stride, *_ignored) -> _LazyTensor:
    # (requires_grad, backward_hooks[, metadata]) do not matter for weights
    if not isinstance(storage, _Storage):
        raise pickle.UnpicklingError("a tensor without a storage")
    return _LazyTensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, *_ignored) -> Any:
    return data  # an nn.Parameter saved directly: its data is all we need


class _TensorUnpickler(pickle.Unpickler):
    """Unpickles a torch state dict and nothing else: the only globals it resolves are
    OrderedDict, torch's storage classes and its tensor/parameter rebuild functions."""

    def __init__(self, file: Any, storages: dict[str, _Storage], legacy: bool):
        super().__init__(file)
        self._storages, self._legacy = storages, legacy

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return _rebuild_parameter
        if module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]
        raise pickle.UnpicklingError(
            f"it pickles {module}.{name}, which a file of weights does not need; not loaded")

    def persistent_load(self, pid: Any) -> _Storage:
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r:.60}")
        dtype, key, _location, numel = pid[1:5]
        if self._legacy and len(pid) > 5 and pid[5] is not None:
            raise pickle.UnpicklingError("storage views (torch < 0.4 files) are not supported")
        if not isinstance(dtype, type) or not issubclass(dtype, np.generic):
            raise pickle.UnpicklingError(f"storage {key} has an unknown type")
        key = str(key)
        if key not in self._storages:
            self._storages[key] = _Storage(dtype, key, numel)
        return self._storages[key]


def _materialise(obj: Any) -> Any:
    if isinstance(obj, _LazyTensor):
        return obj.materialise()
    if isinstance(obj, dict):
        return {k: _materialise(v) for k, v in obj.items()}
    return obj


def _read_torch_zip(zf: zipfile.ZipFile, pkl_name: str) -> Any:
    prefix = pkl_name[: -len("data.pkl")]
    if prefix + "byteorder" in zf.namelist():
        order = zf.read(prefix + "byteorder").decode().strip()
        if order != "little":
            raise ValueError(f"byte order {order!r} is not supported (little-endian only)")
    storages: dict[str, _Storage] = {}
    obj = _TensorUnpickler(io.BytesIO(zf.read(pkl_name)), storages, legacy=False).load()
    for key, st in storages.items():
        raw = zf.read(f"{prefix}data/{key}")
        if len(raw) != st.numel * st.dtype.itemsize:
            raise ValueError(f"storage {key} has {len(raw)} bytes, expected "
                             f"{st.numel * st.dtype.itemsize}")
        st.array = np.frombuffer(raw, st.dtype.newbyteorder("<"))
    return _materialise(obj)


def _read_torch_legacy(f: Any) -> Any:
    header = _TensorUnpickler(f, {}, legacy=True)  # plain values: nothing to resolve
    if header.load() != _LEGACY_MAGIC:
        raise ValueError("not a torch file (no torch magic number)")
    if header.load() != _LEGACY_PROTOCOL:
        raise ValueError("unsupported torch file protocol version")
    info = header.load()
    if isinstance(info, dict) and not info.get("little_endian", True):
        raise ValueError("big-endian torch files are not supported")
    storages: dict[str, _Storage] = {}
    obj = _TensorUnpickler(f, storages, legacy=True).load()
    keys = _TensorUnpickler(f, {}, legacy=True).load()
    for key in keys:
        st = storages.get(str(key))
        if st is None:
            raise ValueError(f"storage {key} is listed but never used")
        count = np.frombuffer(f.read(8), "<i8")
        if count.size != 1 or int(count[0]) != st.numel:
            raise ValueError(f"storage {key}: size header does not match ({st.numel} expected)")
        raw = f.read(st.numel * st.dtype.itemsize)
        if len(raw) != st.numel * st.dtype.itemsize:
            raise ValueError(f"storage {key} is cut short (truncated file?)")
        st.array = np.frombuffer(raw, st.dtype.newbyteorder("<"))
    return _materialise(obj)


def read_state_dict(path: str) -> dict[str, np.ndarray]:
    """{key: array} from a ``torch.save``d state dict (zip or legacy format) or an ``.npz``,
    without torch. Raises :class:`FIDWeightsError` naming the file when it is neither."""
    if not os.path.isfile(path):
        raise FIDWeightsError(
            f"FID Inception weights file {path} not found. Nothing is downloaded: give the "
            f"path of pytorch-fid's {WEIGHTS_FILE} (or an .npz of its keys), e.g. "
            f"--extractor fid_inception:/path/to/{WEIGHTS_FILE}")
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
                pkls = [n for n in names if n == "data.pkl" or n.endswith("/data.pkl")]
                if pkls:
                    state = _read_torch_zip(zf, min(pkls, key=len))
                elif names and all(n.endswith(".npy") for n in names):
                    with np.load(path, allow_pickle=False) as z:
                        state = {k: z[k] for k in z.files}
                else:
                    raise ValueError("a zip archive that is neither a torch file nor an .npz")
        else:
            with open(path, "rb") as f:
                state = _read_torch_legacy(f)
    except FIDWeightsError:
        raise
    except (pickle.UnpicklingError, ValueError, EOFError, OSError, zipfile.BadZipFile,
            KeyError, TypeError, IndexError, AttributeError) as e:
        raise FIDWeightsError(f"cannot read FID Inception weights from {path}: {e}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]  # a checkpoint that wraps its state dict
    if not isinstance(state, dict) or not all(
            isinstance(k, str) and isinstance(v, np.ndarray) for k, v in state.items()):
        raise FIDWeightsError(f"{path} does not hold a state dict (a mapping of names to "
                              "tensors)")
    return state


def write_npz(state: Mapping[str, np.ndarray], path: str) -> None:
    """Writes a state dict to ``path`` (this exact name) as an ``.npz``, without the keys
    inference never reads (``num_batches_tracked``)."""
    kept = {k: v for k, v in state.items() if not k.endswith(IGNORED_SUFFIXES)}
    try:
        with open(path, "wb") as f:  # this exact name (np.savez adds .npz)
            np.savez(f, **kept)
    except OSError as e:
        raise FIDWeightsError(f"cannot write {path}: {e.strerror or e}") from None
