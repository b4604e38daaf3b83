"""Write DataJoint make functions in Python for the ``datajoint`` PostgreSQL extension.

A thin layer over the bindings that ``componentize-py`` generates from ``wasm-make/wit`` (world
``make``): rows are plain ``dict``s of Python values, queries are keyword arguments. An app module::

    import datajoint_make as dj

    def make(key: dict) -> None:
        rec = dj.fetch1("Recording", attributes=["duration", "spike_count"])
        dj.insert1("SpikeRate", {**key, "mean_rate": rec["spike_count"] / rec["duration"]})

    WitWorld = dj.make_world(make)

built with ``componentize-py -d wasm-make/wit -w make componentize app -p APP_DIR -p wasm-make/python
-o app.wasm``.

Values map to the WIT ``value`` variant as follows (Python -> database; reading gives the same
types back):

=====================  ==============  ==============================================
Python                 WIT value       PostgreSQL
=====================  ==============  ==============================================
None                   null            NULL
bool                   boolean         boolean
int                    int             smallint, integer, bigint (ints beyond 64 bits
                                       are sent as decimal text)
float                  float           real, double precision
decimal.Decimal        decimal         numeric
str                    text            text, varchar, char, enum
bytes, bytearray       bytes           bytea
dict, list             json            json, jsonb (read back with json.loads)
datetime.date          date            date
datetime.time          time            time (naive)
datetime.datetime      timestamp       timestamp; an aware datetime is converted to
                                       UTC; read back as a naive datetime
uuid.UUID              uuid            uuid
=====================  ==============  ==============================================

Host errors (a table the make may not read, an SQL error, no row for ``fetch1``...) are not
exceptions here: they end the call, and the key is recorded as failed with the host's message.

Blobs and objects (contract 0.1.1): an in-row ``<blob>`` arrives as bytes, a store attribute
(``<blob@store>``, ``<attach@store>``, ``<object@store>``, ...) as its reference (a dict).
:func:`blob` decodes either (numeric arrays as :class:`datajoint_blob.Array`: dtype, shape and an
``array.array`` in Fortran order; ``.to_numpy()`` with numpy), :func:`encode_blob` makes the
bytes to insert, :func:`read_object` / :class:`ObjectReader` read objects in chunks,
:class:`Upload` / :func:`put_object` / :func:`put_blob` write them and give the reference to
insert. A make reads only objects of references in rows it fetched, and those it uploaded.
"""

import datetime
import decimal
import io
import json
import traceback
import uuid
from typing import Any, Callable, Iterable, Optional, Union

import datajoint_blob
import wit_world
from componentize_py_types import Err
from datajoint_blob import Array, BlobError
from wit_world.imports import host, objects, types

__all__ = [
    "fetch",
    "fetch1",
    "insert",
    "insert1",
    "log",
    "debug",
    "info",
    "notice",
    "warning",
    "quote",
    "make_world",
    "to_value",
    "from_value",
    "Array",
    "BlobError",
    "blob",
    "encode_blob",
    "decode_blob",
    "object_info",
    "read_object",
    "ObjectReader",
    "Upload",
    "put_object",
    "put_blob",
]

_EPOCH_DATE = datetime.date(1970, 1, 1)
_EPOCH = datetime.datetime(1970, 1, 1)
_INT64 = range(-(2**63), 2**63)
_MASK64 = (1 << 64) - 1


def _micros(delta: datetime.timedelta) -> int:
    """A timedelta in whole microseconds (exact: no float on the way)."""
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


# --------------------------------------------------------------------------------------------
# Values
# --------------------------------------------------------------------------------------------


def to_value(x: Any) -> types.Value:
    """The WIT value of a Python value (see the module documentation for the mapping)."""
    if x is None:
        return types.Value_Null()
    if isinstance(x, bool):  # before int: bool is an int
        return types.Value_Boolean(x)
    if isinstance(x, int):
        return types.Value_Int(x) if x in _INT64 else types.Value_Decimal(str(x))
    if isinstance(x, float):
        return types.Value_Float(x)
    if isinstance(x, decimal.Decimal):
        return types.Value_Decimal(format(x, "f"))  # never exponent notation
    if isinstance(x, str):
        return types.Value_Text(x)
    if isinstance(x, (bytes, bytearray, memoryview)):
        return types.Value_Bytes(bytes(x))
    if isinstance(x, datetime.datetime):  # before date: datetime is a date
        if x.tzinfo is not None:
            x = x.astimezone(datetime.timezone.utc).replace(tzinfo=None)
        return types.Value_Timestamp(_micros(x - _EPOCH))
    if isinstance(x, datetime.date):
        return types.Value_Date((x - _EPOCH_DATE).days)
    if isinstance(x, datetime.time):
        if x.tzinfo is not None:
            raise TypeError(f"time with a time zone is not supported: {x!r}")
        return types.Value_Time(((x.hour * 60 + x.minute) * 60 + x.second) * 1_000_000 + x.microsecond)
    if isinstance(x, uuid.UUID):
        return types.Value_Uuid((x.int >> 64, x.int & _MASK64))
    if isinstance(x, (dict, list)):
        return types.Value_Json(json.dumps(x))
    raise TypeError(f"cannot send a {type(x).__name__} to the database: {x!r}")


def from_value(v: types.Value) -> Any:
    """The Python value of a WIT value (see the module documentation for the mapping)."""
    if isinstance(v, types.Value_Null):
        return None
    if isinstance(v, (types.Value_Boolean, types.Value_Int, types.Value_Float, types.Value_Text)):
        return v.value
    if isinstance(v, types.Value_Decimal):
        return decimal.Decimal(v.value)
    if isinstance(v, types.Value_Bytes):
        return bytes(v.value)
    if isinstance(v, types.Value_Json):
        return json.loads(v.value)
    if isinstance(v, types.Value_Date):
        return _EPOCH_DATE + datetime.timedelta(days=v.value)
    if isinstance(v, types.Value_Time):
        seconds, micros = divmod(v.value, 1_000_000)
        minutes, second = divmod(seconds, 60)
        hour, minute = divmod(minutes, 60)
        return datetime.time(hour, minute, second, micros)
    if isinstance(v, types.Value_Timestamp):
        return _EPOCH + datetime.timedelta(microseconds=v.value)
    if isinstance(v, types.Value_Uuid):
        high, low = v.value
        return uuid.UUID(int=(high << 64) | low)
    raise TypeError(f"unknown value {v!r}")


def _to_row(row: dict) -> list:
    return [types.Field(str(name), to_value(value)) for name, value in row.items()]


def _from_row(fields: list) -> dict:
    return {f.name: from_value(f.value) for f in fields}


# --------------------------------------------------------------------------------------------
# Queries and inserts
# --------------------------------------------------------------------------------------------


def _strings(x: Union[str, Iterable[str]]) -> list:
    """A single string is one item, not a sequence of characters."""
    return [x] if isinstance(x, str) else [str(s) for s in x]


def _query(relation, restrictions, attributes, order_by, limit) -> host.Query:
    return host.Query(
        relation=relation,
        restrictions=_strings(restrictions),
        attributes=_strings(attributes),
        order_by=_strings(order_by),
        limit=limit,
    )


def fetch(
    relation: str,
    restrictions: Union[str, Iterable[str]] = (),
    attributes: Union[str, Iterable[str]] = (),
    order_by: Union[str, Iterable[str]] = (),
    limit: Optional[int] = None,
) -> list:
    """The rows of ``relation`` restricted by the current key, as a list of dicts.

    ``relation`` is a class name (``Session``, ``lab.Session``, ``Session.Trial``; a bare name is in
    the target's schema) or an SQL name (``lab.session``), and must be an ancestor of the target.
    ``restrictions`` are SQL conditions (ANDed), ``attributes`` limits the columns (default: all),
    ``order_by`` names attributes, each optionally followed by `` desc``. A single string is
    accepted wherever a list is.
    """
    rows = host.fetch(_query(relation, restrictions, attributes, order_by, limit))
    return [_from_row(row) for row in rows]


def fetch1(
    relation: str,
    restrictions: Union[str, Iterable[str]] = (),
    attributes: Union[str, Iterable[str]] = (),
    order_by: Union[str, Iterable[str]] = (),
    limit: Optional[int] = None,
) -> dict:
    """The one row of ``relation`` restricted by the current key (see :func:`fetch`). No row or
    several rows end the call (the key fails)."""
    return _from_row(host.fetch1(_query(relation, restrictions, attributes, order_by, limit)))


def insert(table: str, rows: Iterable[dict]) -> int:
    """Inserts ``rows`` (dicts) into ``table``: the target, ``Target.Part`` or the bare part name.
    Attributes of the current key that a row lacks are filled in from the key. Returns how many
    rows were inserted."""
    return host.insert(table, [_to_row(row) for row in rows])


def insert1(table: str, row: dict) -> None:
    """Inserts one row into ``table`` (see :func:`insert`)."""
    insert(table, [row])


def quote(text: str) -> str:
    """``text`` as an SQL string literal for restrictions: ``quote("O'Hara")`` is ``'O''Hara'``."""
    return "'" + str(text).replace("'", "''") + "'"


# --------------------------------------------------------------------------------------------
# Blobs and objects
# --------------------------------------------------------------------------------------------

#: Bytes read per host call, and written per call by :func:`put_object`.
CHUNK = 8 << 20

decode_blob = datajoint_blob.unpack
encode_blob = datajoint_blob.pack


def _reference(ref) -> str:
    """A reference as the host takes it: JSON text (a fetched reference is a dict)."""
    return ref if isinstance(ref, str) else json.dumps(ref)


def object_info(ref, member: Optional[str] = None) -> dict:
    """What the object of reference ``ref`` (or file ``member`` of a folder object) is:
    ``store``, ``path``, ``size``, ``is_dir``, ``members``."""
    i = objects.info(_reference(ref), member)
    return {"store": i.store, "path": i.path, "size": i.size, "is_dir": i.is_dir, "members": list(i.members)}


class ObjectReader(io.RawIOBase):
    """A binary file over an object (or a folder object's ``member``), read in chunks."""

    def __init__(self, ref, member: Optional[str] = None):
        super().__init__()
        self._ref, self._member, self._offset = _reference(ref), member, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        want = min(len(buf), CHUNK)
        if want == 0:
            return 0
        data = objects.read(self._ref, self._member, self._offset, want)
        buf[: len(data)] = data
        self._offset += len(data)
        return len(data)


def read_object(ref, member: Optional[str] = None) -> bytes:
    """The whole object of reference ``ref`` (or file ``member`` of a folder object)."""
    ref = _reference(ref)
    parts, offset = [], 0
    while True:
        data = objects.read(ref, member, offset, CHUNK)
        if not data:
            return b"".join(parts)
        parts.append(bytes(data))
        offset += len(data)


def blob(value):
    """The value a blob attribute holds: decoded from the row (``<blob>``, bytes) or read from its
    store and decoded (``<blob@store>``, a reference)."""
    if isinstance(value, (bytes, bytearray)):
        return datajoint_blob.unpack(value)
    return datajoint_blob.unpack(read_object(value))


class Upload:
    """A new object for ``attribute`` of ``table`` (the target or one of its parts) in the row with
    primary key ``key`` (the current key fills in what it lacks), written with :meth:`write`;
    :meth:`finish` stores it and returns the reference to insert. ``filename``: an attachment's
    name, or what gives an ``<object@>`` its extension."""

    def __init__(self, table: str, attribute: str, key: Optional[dict] = None, filename: Optional[str] = None):
        self._upload = objects.Upload(table, attribute, _to_row(key or {}), filename)

    def write(self, data) -> int:
        self._upload.write(bytes(data))
        return len(data)

    def finish(self) -> dict:
        return json.loads(self._upload.finish())

    def close(self) -> None:
        """Releases the upload (finished or not: an unfinished one is forgotten, its spool too)."""
        self._upload.__exit__(None, None, None)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def put_object(table: str, attribute: str, content: bytes, key: Optional[dict] = None, filename: Optional[str] = None) -> dict:
    """Stores ``content`` as a new object for ``attribute`` of ``table`` (see :class:`Upload`);
    returns the reference to insert."""
    with Upload(table, attribute, key, filename) as up:
        view = memoryview(bytes(content))
        for at in range(0, len(view), CHUNK):
            up.write(view[at : at + CHUNK])
        return up.finish()


def put_blob(table: str, attribute: str, value, key: Optional[dict] = None) -> dict:
    """Stores ``value`` as the ``<blob@store>`` object of ``attribute``; returns the reference."""
    return put_object(table, attribute, datajoint_blob.pack(value), key)


# --------------------------------------------------------------------------------------------
# Messages
# --------------------------------------------------------------------------------------------


def log(level: Union[str, host.Level], message: str) -> None:
    """Writes ``message`` for the user who runs populate, at ``level``: ``"debug"`` (server log, or
    DEBUG1 to the client), ``"info"``, ``"notice"`` or ``"warning"``."""
    if isinstance(level, str):
        level = host.Level[level.upper()]
    host.log(level, str(message))


def debug(message: str) -> None:
    log(host.Level.DEBUG, message)


def info(message: str) -> None:
    log(host.Level.INFO, message)


def notice(message: str) -> None:
    log(host.Level.NOTICE, message)


def warning(message: str) -> None:
    log(host.Level.WARNING, message)


# --------------------------------------------------------------------------------------------
# The export
# --------------------------------------------------------------------------------------------


def _describe(e: BaseException) -> str:
    """``ValueError: message (app.py:12 in make)``: the exception and where it was raised."""
    text = "".join(traceback.format_exception_only(type(e), e)).strip()
    frames = traceback.extract_tb(e.__traceback__)
    if frames:
        where = frames[-1]
        text += f" ({where.filename.rsplit('/', 1)[-1]}:{where.lineno} in {where.name})"
    return text


def make_world(make: Callable[[dict], None]) -> type:
    """The ``WitWorld`` class componentize-py exports, calling ``make(key)`` with the key as a dict.

    Assign it in the app module: ``WitWorld = make_world(make)``. An exception raised by ``make``
    fails the key with the exception's type, message and location as the error (nothing the make
    inserted is kept).
    """

    class WitWorld(wit_world.WitWorld):
        def make(self, key: list) -> None:
            try:
                make(_from_row(key))
            except Err:
                raise
            except Exception as e:
                raise Err(_describe(e))

    WitWorld.__doc__ = make.__doc__
    return WitWorld
