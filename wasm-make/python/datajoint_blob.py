"""DataJoint's ``<blob>`` serialization in pure Python (standard library only), for make functions.

The same format datajoint-python 2.3.5's ``blob.pack`` / ``blob.unpack`` and the extension's Rust
codec read and write: a ``mYm\\0`` header (``dj0\\0`` once a Python-only value is in it), one value,
and above 1 000 bytes ``ZL123\\0`` + the length + a zlib stream when that is smaller.

Numeric arrays are :class:`Array`: a numpy dtype name, a shape, and the elements in Fortran order
(column-major, as numpy's ``order='F'`` and MATLAB keep them) in an ``array.array``; with numpy
installed, :meth:`Array.to_numpy` gives the ndarray. Other values map to Python's own: ``None``,
``bool``, ``int``, ``float``, ``complex``, ``str``, ``bytes``, ``decimal.Decimal``, ``uuid.UUID``,
``datetime``/``date``/``time``, ``tuple``, ``list``, ``set``, ``dict``. MATLAB structs come back as a
list of dicts, cell arrays as lists, numpy record arrays as a dict of field arrays, char arrays as
``str``.
"""

import array
import datetime
import decimal
import struct
import uuid
import zlib

__all__ = ["Array", "pack", "unpack", "BlobError"]

_DTYPES = {
    # type_id: (numpy name, array typecode)
    3: ("bool", "B"),
    6: ("float64", "d"),
    7: ("float32", "f"),
    8: ("int8", "b"),
    9: ("uint8", "B"),
    10: ("int16", "h"),
    11: ("uint16", "H"),
    12: ("int32", "i"),
    13: ("uint32", "I"),
    14: ("int64", "q"),
    15: ("uint64", "Q"),
}
_DATETIME_UNITS = ["Y", "M", "W", "D", "h", "m", "s", "ms", "us", "ns", "ps", "fs", "as"]
_TYPE_IDS = {name: tid for tid, (name, _) in _DTYPES.items()}
_MAX_DEPTH = 200


class BlobError(ValueError):
    pass


class Array:
    """A numeric n-d array: ``dtype`` (numpy's name), ``shape`` (a tuple), ``data`` (the elements
    in Fortran order, an ``array.array``)."""

    def __init__(self, dtype: str, shape, data):
        self.dtype = dtype
        self.shape = tuple(int(d) for d in shape)
        code = _typecode(dtype)
        if not isinstance(data, array.array) or data.typecode != code:
            data = array.array(code, data)  # the dtype's element type, whatever was given
        self.data = data
        n = 1
        for d in self.shape:
            n *= d
        if len(data) != n:
            raise BlobError(f"{len(data)} elements do not fill shape {self.shape}")

    def __repr__(self):
        return f"Array({self.dtype!r}, {self.shape}, {self.data!r})"

    def __eq__(self, other):
        return isinstance(other, Array) and (self.dtype, self.shape, self.data) == (other.dtype, other.shape, other.data)

    def to_numpy(self):
        """The array as a numpy ndarray (needs numpy)."""
        import numpy

        return numpy.frombuffer(self.data.tobytes(), dtype=self.dtype).reshape(self.shape, order="F")


def _typecode(dtype: str) -> str:
    if dtype.startswith("datetime64["):
        return "q"
    for name, code in _DTYPES.values():
        if name == dtype:
            return code
    raise BlobError(f"unsupported dtype {dtype!r}")


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------


class _Reader:
    def __init__(self, buf: bytes):
        self.buf = memoryview(buf)
        self.pos = 0
        self.depth = 0

    def take(self, n: int) -> memoryview:
        if n < 0 or self.pos + n > len(self.buf):
            raise BlobError(f"truncated blob: {n} bytes needed at offset {self.pos}")
        s = self.buf[self.pos : self.pos + n]
        self.pos += n
        return s

    def unpack(self, fmt: str):
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt)))

    def u64(self) -> int:
        return self.unpack("Q")[0]

    def shape(self):
        ndim = self.u64()
        if ndim * 8 > len(self.buf) - self.pos:
            raise BlobError(f"truncated blob: {ndim} dimensions declared at offset {self.pos}")
        return tuple(self.unpack(f"{ndim}Q"))

    def item(self):
        n = self.u64()
        end = self.pos + n
        v = self.value()
        if self.pos != end:
            raise BlobError("blob length check failed: an item's length does not match its content")
        return v

    def names(self, n: int):
        out = []
        for _ in range(n):
            end = bytes(self.buf[self.pos :]).find(b"\0")
            if end < 0:
                raise BlobError("truncated field name")
            out.append(bytes(self.take(end)).decode())
            self.pos += 1
        return out

    def value(self):
        if self.depth >= _MAX_DEPTH:
            raise BlobError(f"the blob nests deeper than {_MAX_DEPTH} levels")
        self.depth += 1
        try:
            return self._value(self.take(1)[0])
        finally:
            self.depth -= 1

    def _value(self, code: int):
        if code == ord("A"):
            return self.array()
        if code == ord("S"):
            shape = self.shape()
            n = _count(shape)
            fields = self.names(self.unpack("I")[0])
            return [{f: self.item() for f in fields} for _ in range(n)] if fields else []
        if code == ord("C"):
            return [self.item() for _ in range(_count(self.shape()))]
        if code == ord("F"):
            fields = self.names(self.unpack("I")[0])
            return {f: self.value() for f in fields}
        if code == 0xFF:
            return None
        if code in (0x01, 0x02, 0x03):
            items = [self.item() for _ in range(self.u64())]
            return tuple(items) if code == 0x01 else set(items) if code == 0x03 else items
        if code == 0x04:
            pairs = [(self.item(), self.item()) for _ in range(self.u64())]
            return dict(pairs)
        if code == 0x05:
            return bytes(self.take(self.u64())).decode()
        if code == 0x06:
            return bytes(self.take(self.u64()))
        if code == 0x0A:
            n = self.unpack("H")[0]
            if n == 0:
                raise BlobError("an int of zero bytes")
            return int.from_bytes(self.take(n), "little", signed=True)
        if code == 0x0B:
            return self.take(1)[0] != 0
        if code == 0x0C:
            re, im = self.unpack("dd")
            return complex(re, im)
        if code == 0x0D:
            return self.unpack("d")[0]
        if code == ord("d"):
            return decimal.Decimal(bytes(self.take(self.u64())).decode())
        if code == ord("t"):
            date, time = self.unpack("iq")
            return _datetime(date, time)
        if code == ord("u"):
            return uuid.UUID(bytes=bytes(self.take(16)))
        raise BlobError(f"unknown data structure code {code:#04x}")

    def array(self):
        shape = self.shape()
        n = _count(shape)
        type_id, complex_ = self.unpack("II")
        if type_id == 5:  # object array: each element a blob
            return [self.item() for _ in range(n)]
        if type_id == 4:  # MATLAB char: u16 code units
            return array.array("H", bytes(self.take(2 * n))).tobytes().decode("utf-16-le")
        if 65_536 <= type_id <= 65_548:
            dtype, code = f"datetime64[{_DATETIME_UNITS[type_id - 65_536]}]", "q"
        elif type_id in _DTYPES:
            dtype, code = _DTYPES[type_id]
        else:
            raise BlobError(f"unknown array type id {type_id}")
        size = array.array(code).itemsize
        real = array.array(code, bytes(self.take(n * size)))
        if not complex_:
            return Array(dtype, shape, real)
        imag = array.array(code, bytes(self.take(n * size)))
        return [complex(r, i) for r, i in zip(real, imag)]


def _count(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _datetime(date: int, time: int):
    d = None if date < 0 else datetime.date(date // 10000, date // 100 % 100, date % 100)
    t = None
    if time >= 0:
        hms, us = divmod(time, 1_000_000)
        t = datetime.time(hms // 10000, hms // 100 % 100, hms % 100, us)
    if d is not None and t is not None:
        return datetime.datetime.combine(d, t)
    return d if d is not None else t


def unpack(blob: bytes):
    """The value DataJoint's blob bytes hold."""
    blob = bytes(blob)
    if blob.startswith(b"ZL123\0"):
        if len(blob) < 14:
            raise BlobError("truncated compressed blob")
        (size,) = struct.unpack("<Q", blob[6:14])
        try:
            blob = zlib.decompress(blob[14:])
        except zlib.error as e:
            raise BlobError(f"the blob's zlib stream is damaged: {e}") from None
        if len(blob) != size:
            raise BlobError(f"blob size mismatch: expected {size}, got {len(blob)}")
    nul = blob.find(b"\0")
    if blob[:nul] not in (b"mYm", b"dj0"):
        raise BlobError("the header is not mYm or dj0")
    r = _Reader(blob)
    r.pos = nul + 1
    try:
        v = r.value()
    except BlobError:
        raise
    except (struct.error, ValueError, OverflowError, MemoryError, IndexError) as e:
        raise BlobError(f"a damaged blob: {e}") from None
    if r.pos != len(blob):
        raise BlobError("blob length check failed: bytes after the value")
    return v


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------


class _Writer:
    def __init__(self):
        self.out = bytearray(b"mYm\0")
        self.dj0 = False
        self.depth = 0

    def u64(self, n: int):
        self.out += struct.pack("<Q", n)

    def item(self, v):
        at = len(self.out)
        self.u64(0)
        self.value(v)
        self.out[at : at + 8] = struct.pack("<Q", len(self.out) - at - 8)

    def sequence(self, code: int, items):
        self.out.append(code)
        self.u64(len(items))
        for v in items:
            self.item(v)

    def text(self, code: int, b: bytes):
        self.out.append(code)
        self.u64(len(b))
        self.out += b

    def value(self, v):
        if self.depth >= _MAX_DEPTH:
            raise BlobError(f"the value nests deeper than {_MAX_DEPTH} levels")
        self.depth += 1
        if not isinstance(v, Array):
            self.dj0 = True
        try:
            self._value(v)
        finally:
            self.depth -= 1

    def _value(self, v):
        if isinstance(v, Array):
            if v.dtype.startswith("datetime64["):
                type_id = 65_536 + _DATETIME_UNITS.index(v.dtype[11:-1])
                self.dj0 = True
            elif v.dtype in _TYPE_IDS:
                type_id = _TYPE_IDS[v.dtype]
            else:
                raise BlobError(f"unsupported dtype {v.dtype!r}")
            if not v.shape:
                self.dj0 = True
            self.out += b"A"
            self.u64(len(v.shape))
            for d in v.shape:
                self.u64(d)
            self.out += struct.pack("<II", type_id, 0)
            self.out += v.data.tobytes()
        elif v is None:
            self.out.append(0xFF)
        elif isinstance(v, bool):
            self.out += bytes([0x0B, int(v)])
        elif isinstance(v, int):
            n = v.bit_length() // 8 + 1
            if n > 0xFFFF:
                raise BlobError("integers are limited to 65 535 bytes")
            self.out.append(0x0A)
            self.out += struct.pack("<H", n) + v.to_bytes(n, "little", signed=True)
        elif isinstance(v, float):
            self.out += b"\x0d" + struct.pack("<d", v)
        elif isinstance(v, complex):
            self.out += b"\x0c" + struct.pack("<dd", v.real, v.imag)
        elif isinstance(v, str):
            self.text(0x05, v.encode())
        elif isinstance(v, (bytes, bytearray, memoryview)):
            self.text(0x06, bytes(v))
        elif isinstance(v, decimal.Decimal):
            self.text(ord("d"), str(v).encode())
        elif isinstance(v, uuid.UUID):
            self.out += b"u" + v.bytes
        elif isinstance(v, (datetime.datetime, datetime.date, datetime.time)):
            date = time = -1
            if isinstance(v, datetime.date):
                date = v.year * 10000 + v.month * 100 + v.day
            if isinstance(v, (datetime.datetime, datetime.time)):
                time = ((v.hour * 100 + v.minute) * 100 + v.second) * 1_000_000 + v.microsecond
            self.out += b"t" + struct.pack("<iq", date, time)
        elif isinstance(v, tuple):
            self.sequence(0x01, v)
        elif isinstance(v, list):
            self.sequence(0x02, v)
        elif isinstance(v, (set, frozenset)):
            self.sequence(0x03, list(v))
        elif isinstance(v, dict):
            self.out.append(0x04)
            self.u64(len(v))
            for k, x in v.items():
                self.item(k)
                self.item(x)
        else:
            raise BlobError(f"cannot pack a {type(v).__name__}")


def pack(value) -> bytes:
    """DataJoint's blob bytes of ``value``, compressed as datajoint-python compresses them."""
    w = _Writer()
    w.value(value)
    blob = bytes(w.out)
    if w.dj0:
        blob = b"dj0\0" + blob[4:]
    if len(blob) > 1000:
        deflated = zlib.compress(blob)
        if len(deflated) + 14 < len(blob):
            return b"ZL123\0" + struct.pack("<Q", len(blob)) + deflated
    return blob
