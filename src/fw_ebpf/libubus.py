# SPDX-License-Identifier: GPL-2.0-only
"""ctypes binding of OpenWrt's libubus, driven from the caller's own event loop (no uloop).

Only what ebpfw uses: connect to a socket path, the connection's fd, dispatch of what arrived
(libubus.h's inline ubus_handle_event), an object whose methods declare typed optional arguments,
replies, synchronous calls (lookup + invoke) and reconnecting. Every call to the object is
deferred (as C services do with ubus_defer_request): libubus's callback only copies the request
and queues it, and the caller answers it later from its loop, so no daemon code ever runs inside
libubus, whether the message arrived in ubus_handle_event or during one of our own synchronous
calls.

Messages are encoded and decoded here (the blob/blobmsg wire format, big-endian), so nothing
depends on json-c and the codec is tested without libubus. The structs are the libubus.h and
libubox layouts of 2023 and later (OpenWrt 23.05+), written with ctypes types so pointer size and
alignment are the platform's; only the leading members of struct ubus_context (up to `sock`, none
of them time_t-dependent) are read. The library is loaded on first use: importing this module on
a host without libubus works, and using it raises UbusError saying why.
"""
from __future__ import annotations

import collections
import ctypes
import ctypes.util
import enum
import functools
import glob
import signal
import struct
from dataclasses import dataclass
from typing import Any, Callable, Iterator

# ubusd drops a client that sends a message larger than this (UBUS_MAX_MSGLEN, ubus CMakeLists)
MAX_MSGLEN = 1 << 20
# what a reply's data may take: the message header and the reply's own attributes need the rest
MAX_REPLY_DATA = MAX_MSGLEN - 1024
ULOOP_READ = 1


class Status(enum.IntEnum):
    """enum ubus_msg_status (ubusmsg.h)."""

    OK = 0
    INVALID_COMMAND = 1
    INVALID_ARGUMENT = 2
    METHOD_NOT_FOUND = 3
    NOT_FOUND = 4
    NO_DATA = 5
    PERMISSION_DENIED = 6
    TIMEOUT = 7
    NOT_SUPPORTED = 8
    UNKNOWN_ERROR = 9
    CONNECTION_FAILED = 10
    NO_MEMORY = 11
    PARSE_ERROR = 12
    SYSTEM_ERROR = 13


class UbusError(RuntimeError):
    """A libubus failure; .status is the ubus status (Status.UNKNOWN_ERROR when there is none)."""

    def __init__(self, message: str, status: int = Status.UNKNOWN_ERROR) -> None:
        super().__init__(message)
        self.status = status


class NoSuchObject(UbusError):
    """A call to an object nobody registered (e.g. `uci` without rpcd)."""


class BlobError(ValueError):
    """A message that is not well-formed blobmsg, or a value blobmsg cannot carry."""


# ---- blob / blobmsg wire format (libubox blob.h, blobmsg.h) --------------------------------------

class BlobmsgType(enum.IntEnum):
    UNSPEC = 0
    ARRAY = 1
    TABLE = 2
    STRING = 3
    INT64 = 4
    INT32 = 5
    INT16 = 6
    INT8 = 7        # also BOOL: blobmsg has no other boolean
    DOUBLE = 8


BOOL = BlobmsgType.INT8
_EXTENDED = 0x80000000          # the attribute carries a blobmsg name header
_ID_SHIFT, _ID_MASK, _LEN_MASK = 24, 0x7F, 0x00FFFFFF
_U32, _U16 = struct.Struct(">I"), struct.Struct(">H")
_SCALARS = {BlobmsgType.INT16: struct.Struct(">h"), BlobmsgType.INT32: struct.Struct(">i"),
            BlobmsgType.INT64: struct.Struct(">q"), BlobmsgType.DOUBLE: struct.Struct(">d")}


def _pad(n: int) -> int:
    return (n + 3) & ~3


def encode(values: dict[str, Any]) -> bytes:
    """What a blob_buf's head holds: an unnamed attribute whose payload is one blobmsg
    attribute per item (the form ubus_send_reply and ubus_invoke take)."""
    payload = b"".join(_attr(str(k), v) for k, v in values.items())
    return _U32.pack(4 + len(payload)) + payload


def _attr(name: str, value: Any) -> bytes:
    kind, data = _value(value)
    raw_name = name.encode()
    head = _U16.pack(len(raw_name)) + raw_name + b"\0"
    head += bytes(_pad(len(head)) - len(head))
    raw_len = 4 + len(head) + len(data)
    if raw_len > _LEN_MASK:
        raise BlobError(f"'{name}' is too long for a blob attribute ({raw_len} bytes)")
    return (_U32.pack(_EXTENDED | kind << _ID_SHIFT | raw_len) + head + data
            + bytes(_pad(raw_len) - raw_len))


def _value(value: Any) -> tuple[int, bytes]:
    """The blobmsg type and payload of a value, chosen as libubox's JSON conversion does."""
    if value is None:
        return BlobmsgType.UNSPEC, b""
    if isinstance(value, bool):
        return BOOL, bytes([value])
    if isinstance(value, int):
        if -(1 << 31) <= value < 1 << 31:
            return BlobmsgType.INT32, _SCALARS[BlobmsgType.INT32].pack(value)
        if -(1 << 63) <= value < 1 << 63:
            return BlobmsgType.INT64, _SCALARS[BlobmsgType.INT64].pack(value)
        raise BlobError(f"integer {value} does not fit in 64 bits")
    if isinstance(value, float):
        return BlobmsgType.DOUBLE, _SCALARS[BlobmsgType.DOUBLE].pack(value)
    if isinstance(value, str):
        return BlobmsgType.STRING, value.encode() + b"\0"
    if isinstance(value, dict):
        return BlobmsgType.TABLE, b"".join(_attr(str(k), v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return BlobmsgType.ARRAY, b"".join(_attr("", v) for v in value)
    raise BlobError(f"blobmsg cannot carry a {type(value).__name__}")


def decode(raw: bytes) -> dict[str, Any]:
    """The inverse of encode(): an attribute (header included) whose payload is a table."""
    if len(raw) < 4:
        raise BlobError("message shorter than a blob header")
    length = _U32.unpack_from(raw)[0] & _LEN_MASK
    if not 4 <= length <= len(raw):
        raise BlobError(f"blob length {length} outside the {len(raw)} bytes received")
    return dict(_attrs(memoryview(raw)[4:length]))


def _attrs(buf: memoryview) -> Iterator[tuple[str, Any]]:
    off = 0
    while off < len(buf):
        if len(buf) - off < 4:
            raise BlobError("truncated attribute header")
        id_len = _U32.unpack_from(buf, off)[0]
        raw_len = id_len & _LEN_MASK
        if raw_len < 4 or off + raw_len > len(buf):
            raise BlobError(f"attribute length {raw_len} outside its container")
        if not id_len & _EXTENDED:
            raise BlobError("attribute without a blobmsg name header")
        body = buf[off + 4:off + raw_len]
        if len(body) < 3:
            raise BlobError("truncated blobmsg name header")
        namelen = _U16.unpack_from(body)[0]
        head = _pad(2 + namelen + 1)
        if head > len(body) or body[2 + namelen] != 0:
            raise BlobError("malformed blobmsg name")
        name = bytes(body[2:2 + namelen]).decode(errors="replace")
        yield name, _decode_value((id_len >> _ID_SHIFT) & _ID_MASK, body[head:])
        off += _pad(raw_len)


def _decode_value(kind: int, data: memoryview) -> Any:
    if kind == BlobmsgType.UNSPEC:
        return None
    if kind == BlobmsgType.STRING:
        if not data or data[-1] != 0:
            raise BlobError("string without its terminating NUL")
        return bytes(data[:-1]).split(b"\0", 1)[0].decode(errors="replace")
    if kind == BOOL:
        if len(data) < 1:
            raise BlobError("empty bool")
        return data[0] != 0
    if kind in _SCALARS:
        fmt = _SCALARS[BlobmsgType(kind)]
        if len(data) < fmt.size:
            raise BlobError(f"{BlobmsgType(kind).name.lower()} shorter than {fmt.size} bytes")
        return fmt.unpack_from(data)[0]
    if kind == BlobmsgType.TABLE:
        return dict(_attrs(data))
    if kind == BlobmsgType.ARRAY:
        return [v for _, v in _attrs(data)]
    raise BlobError(f"unknown blobmsg type {kind}")


# ---- C structures (libubox list.h, avl.h, uloop.h, blobmsg.h; libubus.h) ------------------------

_P, _S = ctypes.c_void_p, ctypes.c_char_p


class _ListHead(ctypes.Structure):
    _fields_ = [("next", _P), ("prev", _P)]


class _AvlNode(ctypes.Structure):
    _fields_ = [("list", _ListHead), ("parent", _P), ("left", _P), ("right", _P), ("key", _P),
                ("balance", ctypes.c_byte), ("leader", ctypes.c_bool)]


class _AvlTree(ctypes.Structure):
    _fields_ = [("list_head", _ListHead), ("root", _P), ("count", ctypes.c_uint),
                ("allow_dups", ctypes.c_bool), ("comp", _P), ("cmp_ptr", _P)]


class _UloopFd(ctypes.Structure):
    _fields_ = [("cb", _P), ("fd", ctypes.c_int), ("eof", ctypes.c_bool),
                ("error", ctypes.c_bool), ("registered", ctypes.c_bool), ("flags", ctypes.c_uint8)]


class _ContextHead(ctypes.Structure):
    """The leading members of struct ubus_context (allocated by libubus; nothing after `sock`,
    where the time_t-sized members start, is touched)."""

    _fields_ = [("requests", _ListHead), ("objects", _AvlTree), ("pending", _ListHead),
                ("sock", _UloopFd)]


class _BlobmsgPolicy(ctypes.Structure):
    _fields_ = [("name", _S), ("type", ctypes.c_int)]


# int (*)(struct ubus_context *, struct ubus_object *, struct ubus_request_data *,
#         const char *method, struct blob_attr *msg)
_Handler = ctypes.CFUNCTYPE(ctypes.c_int, _P, _P, _P, _S, _P)
# void (*)(struct ubus_request *, int type, struct blob_attr *msg)
_DataHandler = ctypes.CFUNCTYPE(None, _P, ctypes.c_int, _P)
_UloopFdHandler = ctypes.CFUNCTYPE(None, _P, ctypes.c_uint)


class _Method(ctypes.Structure):
    _fields_ = [("name", _S), ("handler", _Handler), ("mask", ctypes.c_ulong),
                ("tags", ctypes.c_ulong), ("policy", ctypes.POINTER(_BlobmsgPolicy)),
                ("n_policy", ctypes.c_int)]


class _ObjectType(ctypes.Structure):
    _fields_ = [("name", _S), ("id", ctypes.c_uint32), ("methods", ctypes.POINTER(_Method)),
                ("n_methods", ctypes.c_int)]


class _Object(ctypes.Structure):
    _fields_ = [("avl", _AvlNode), ("name", _S), ("id", ctypes.c_uint32), ("path", _S),
                ("type", ctypes.POINTER(_ObjectType)), ("subscribe_cb", _P),
                ("has_subscribers", ctypes.c_bool), ("methods", ctypes.POINTER(_Method)),
                ("n_methods", ctypes.c_int)]


class _AclKey(ctypes.Structure):
    _fields_ = [("user", _S), ("group", _S), ("object", _S)]


class _RequestData(ctypes.Structure):
    _fields_ = [("object", ctypes.c_uint32), ("peer", ctypes.c_uint32), ("seq", ctypes.c_uint16),
                ("acl", _AclKey), ("deferred", ctypes.c_bool), ("fd", ctypes.c_int),
                ("req_fd", ctypes.c_int)]


# ---- library loading --------------------------------------------------------------------------

def _candidates() -> list[str]:
    # dlopen by name honours LD_LIBRARY_PATH; OpenWrt has no ldconfig cache, so look in /lib too
    found = ctypes.util.find_library("ubus")
    return ([found] if found else []) + ["libubus.so"] + sorted(
        glob.glob("/lib/libubus.so*") + glob.glob("/usr/lib/libubus.so*"))


_PROTOS: tuple[tuple[str, object, tuple[object, ...]], ...] = (
    ("ubus_connect", _P, (_S,)),
    ("ubus_reconnect", ctypes.c_int, (_P, _S)),
    ("ubus_free", None, (_P,)),
    ("ubus_strerror", _S, (ctypes.c_int,)),
    ("ubus_add_object", ctypes.c_int, (_P, ctypes.POINTER(_Object))),
    ("ubus_lookup_id", ctypes.c_int, (_P, _S, ctypes.POINTER(ctypes.c_uint32))),
    ("ubus_invoke_fd", ctypes.c_int, (_P, ctypes.c_uint32, _S, _P, _DataHandler, _P,
                                      ctypes.c_int, ctypes.c_int)),
    ("ubus_send_reply", ctypes.c_int, (_P, ctypes.POINTER(_RequestData), _P)),
    ("ubus_complete_deferred_request", None, (_P, ctypes.POINTER(_RequestData), ctypes.c_int)),
)


@functools.cache
def _lib() -> ctypes.CDLL:
    errors = []
    for name in _candidates():
        try:
            lib = ctypes.CDLL(name)
            break
        except OSError as e:
            errors.append(str(e))
    else:
        raise UbusError("ubus needs OpenWrt's libubus, which is not installed here ("
                        + "; ".join(errors[-1:]) + ")", Status.NOT_SUPPORTED)
    for fn_name, restype, argtypes in _PROTOS:
        fn = getattr(lib, fn_name)
        fn.restype = restype
        fn.argtypes = list(argtypes)
    return lib


def available() -> bool:
    try:
        _lib()
    except UbusError:
        return False
    return True


def strerror(status: int) -> str:
    return _lib().ubus_strerror(status).decode()


def _restore_signals() -> None:
    """ubus_connect runs uloop_init, which puts uloop's handlers on SIGTERM and SIGCHLD where they
    were SIG_DFL (a SIGTERM would then be swallowed): give Python's dispositions back."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD, signal.SIGPIPE):
        handler = signal.getsignal(sig)
        if handler is not None:
            try:
                signal.signal(sig, handler)
            except ValueError:   # not the main thread: nothing was changed from here anyway
                return


# ---- the connection ---------------------------------------------------------------------------

@dataclass
class Request:
    """A deferred call to one of our objects, answered with Connection.reply."""

    object: str
    method: str
    data: bytes                 # the call's data attribute as received (decode() gives the dict)
    _req: _RequestData
    _generation: int

    def args(self) -> dict[str, Any]:
        return decode(self.data)


@dataclass
class _Registered:
    name: str
    c: _Object
    keep: list[object]          # the C arrays and strings the object points into


class Connection:
    """One libubus context: the caller polls fileno() and calls handle() when it is readable."""

    def __init__(self, path: str | None = None) -> None:
        lib = _lib()
        self.path = path
        self._path = path.encode() if path else None
        ctx = lib.ubus_connect(self._path)
        _restore_signals()
        if not ctx:
            raise UbusError(f"cannot connect to ubus at {self.where}", Status.CONNECTION_FAILED)
        self._ctx: int | None = ctx
        self._head = _ContextHead.from_address(ctx)
        self._dispatch = _UloopFdHandler(self._head.sock.cb)     # libubus's ubus_handle_data
        self._objects: list[_Registered] = []
        self._handler = _Handler(self._on_call)
        self._generation = 0
        self.requests: collections.deque[Request] = collections.deque()
        # called after a call was queued (from inside libubus): must not block
        self.on_request: Callable[[], None] | None = None

    @property
    def where(self) -> str:
        return self.path or "the default socket"

    def fileno(self) -> int:
        return self._head.sock.fd if self._ctx else -1

    @property
    def connected(self) -> bool:
        return bool(self._ctx) and self._head.sock.fd >= 0 and not self._head.sock.eof

    def handle(self) -> None:
        """Reads and dispatches what arrived (ubus_handle_event); never blocks on a quiet socket.
        Calls to our objects are only queued on self.requests."""
        if self.connected:
            self._dispatch(ctypes.addressof(self._head.sock), ULOOP_READ)

    def reconnect(self) -> None:
        """A new socket to ubusd; libubus registers our objects again on it."""
        if not self._ctx:
            raise UbusError("the ubus connection is closed")
        # asked on the old connection: nobody waits for those answers now (calls that arrive
        # while libubus registers our objects again belong to the new one)
        self._generation += 1
        self.requests.clear()
        ret = _lib().ubus_reconnect(self._ctx, self._path)
        if ret != Status.OK:
            # libubus closed the socket but left its number in the context: never close it twice
            self._head.sock.fd = -1
            raise UbusError(f"cannot connect to ubus at {self.where}: {strerror(ret)}", ret)
        for obj in self._objects:
            if obj.c.id == 0:          # libubus re-adds objects but ignores a failure
                self._add(obj)

    def add_object(self, name: str, methods: dict[str, dict[str, BlobmsgType]]) -> None:
        """Registers `name`; every argument in a method's policy is optional, others are passed
        through, as blobmsg_parse does for C services. Calls are queued on self.requests."""
        keep: list[object] = []
        c_methods = (_Method * len(methods))()
        for i, (method, policy) in enumerate(methods.items()):
            c_policy = (_BlobmsgPolicy * max(1, len(policy)))()
            for j, (arg, kind) in enumerate(policy.items()):
                c_policy[j] = _BlobmsgPolicy(arg.encode(), int(kind))
            keep.append(c_policy)
            c_methods[i] = _Method(method.encode(), self._handler, 0, 0, c_policy, len(policy))
        obj_type = _ObjectType(name.encode(), 0, c_methods, len(methods))
        c_obj = _Object(name=name.encode(), type=ctypes.pointer(obj_type), methods=c_methods,
                        n_methods=len(methods))
        keep += [c_methods, obj_type]
        registered = _Registered(name, c_obj, keep)
        self._objects.append(registered)    # a call may arrive while libubus registers it
        try:
            self._add(registered)
        except UbusError:
            self._objects.remove(registered)
            raise

    def _add(self, obj: _Registered) -> None:
        ret = _lib().ubus_add_object(self._ctx, ctypes.byref(obj.c))
        if ret != Status.OK:
            raise UbusError(f"cannot register ubus object '{obj.name}': {strerror(ret)}", ret)

    def _on_call(self, _ctx: int, obj: int, req: int, method: bytes, msg: int) -> int:
        """libubus's method handler: defers the request (ubus_defer_request) and queues it."""
        try:
            name = next(o.name for o in self._objects if ctypes.addressof(o.c) == obj)
            size = ctypes.sizeof(_RequestData)
            saved = _RequestData.from_buffer_copy(ctypes.string_at(req, size))
            self.requests.append(Request(name, method.decode(errors="replace"), _raw(msg), saved,
                                         self._generation))
            _RequestData.from_address(req).deferred = True
        except Exception:   # nothing may escape into C; libubus answers with this status
            return Status.UNKNOWN_ERROR
        if self.on_request is not None:
            try:
                self.on_request()
            except Exception:   # the request is queued all the same
                pass
        return Status.OK

    def reply(self, request: Request, data: dict[str, Any] | None,
              status: int = Status.OK) -> None:
        """Answers a queued request: its data (if any), then its status. A request from before
        a reconnect is dropped. Raises BlobError, before anything is sent, when the data does
        not fit in one ubus message."""
        if request._generation != self._generation or not self.connected:
            return
        if data is not None:
            blob = encode(data)
            if len(blob) > MAX_REPLY_DATA:
                raise BlobError(f"reply of {len(blob)} bytes exceeds ubus's message limit")
            _lib().ubus_send_reply(self._ctx, ctypes.byref(request._req), _buffer(blob))
        _lib().ubus_complete_deferred_request(self._ctx, ctypes.byref(request._req), status)

    def call(self, path: str, method: str, args: dict[str, Any] | None = None,
             timeout_ms: int = 5000) -> dict[str, Any] | None:
        """A synchronous call (ubus_lookup_id + ubus_invoke); the last data reply, if any.
        Calls to our own objects that arrive meanwhile are only queued (see handle)."""
        if not self.connected:
            raise UbusError(f"not connected to ubus at {self.where}", Status.CONNECTION_FAILED)
        lib = _lib()
        obj_id = ctypes.c_uint32()
        ret = lib.ubus_lookup_id(self._ctx, path.encode(), ctypes.byref(obj_id))
        if ret != Status.OK:
            raise NoSuchObject(f"ubus object '{path}' at {self.where}: {strerror(ret)}", ret)
        replies: list[bytes] = []
        on_data = _DataHandler(lambda _req, _type, msg: replies.append(_raw(msg)))
        ret = lib.ubus_invoke_fd(self._ctx, obj_id.value, method.encode(),
                                 _buffer(encode(args or {})), on_data, None, timeout_ms, -1)
        if ret != Status.OK:
            raise UbusError(f"ubus call {path} {method}: {strerror(ret)}", ret)
        return decode(replies[-1]) if replies else None

    def close(self) -> None:
        """Frees the context; closing its socket makes ubusd remove our objects."""
        if self._ctx:
            _lib().ubus_free(self._ctx)
            self._ctx = None
            self.requests.clear()


def _buffer(blob: bytes) -> ctypes.Array[ctypes.c_char]:
    """A copy in C memory: libubus reads blob headers as aligned 32-bit words."""
    return ctypes.create_string_buffer(blob, len(blob))


def _raw(msg: int) -> bytes:
    """A blob attribute from libubus, header included, as bytes."""
    length = _U32.unpack(ctypes.string_at(msg, 4))[0] & _LEN_MASK
    return ctypes.string_at(msg, max(4, length))
