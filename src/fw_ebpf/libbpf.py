# SPDX-License-Identifier: GPL-2.0-only
"""ctypes binding of the system libbpf 1.x: objects, maps, programs, ring buffers, links, tc.

Only the calls ebpfw needs. libbpf 1.x returns negative errno from int functions and NULL with
errno set from pointer functions; both become BpfError here. Struct layouts follow libbpf 1.1's
public headers; every opts struct starts with its own size, so libbpf treats the fields we leave
out as zero.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import errno
import functools
import logging
import os
import socket
from dataclasses import dataclass
from typing import Callable, Iterator

log = logging.getLogger("fw_ebpf.libbpf")

# uapi constants (linux/bpf.h, linux/if_link.h, libbpf.h)
BPF_ANY, BPF_NOEXIST, BPF_EXIST = 0, 1, 2
BPF_MAP_TYPE_HASH = 1
BPF_MAP_TYPE_ARRAY = 2
BPF_MAP_TYPE_PERCPU_HASH = 5
BPF_MAP_TYPE_PERCPU_ARRAY = 6
BPF_MAP_TYPE_LRU_HASH = 9
BPF_MAP_TYPE_LRU_PERCPU_HASH = 10
BPF_MAP_TYPE_DEVMAP_HASH = 25
BPF_MAP_TYPE_RINGBUF = 27
PERCPU_MAP_TYPES = frozenset({BPF_MAP_TYPE_PERCPU_HASH, BPF_MAP_TYPE_PERCPU_ARRAY,
                              BPF_MAP_TYPE_LRU_PERCPU_HASH})
BPF_PROG_TYPE_SCHED_CLS = 3
BPF_PROG_TYPE_XDP = 6
BPF_XDP = 37  # enum bpf_attach_type
XDP_FLAGS_SKB_MODE = 1 << 1
XDP_FLAGS_DRV_MODE = 1 << 2
XDP_MODE_FLAGS = {"native": XDP_FLAGS_DRV_MODE, "generic": XDP_FLAGS_SKB_MODE}
BPF_TC_INGRESS, BPF_TC_EGRESS = 1, 2
BPF_TC_F_REPLACE = 1
ENOTSUPP = 524  # kernel-internal, leaks out of the bpf syscall; os.strerror does not know it

LOG_TAIL_CHARS = 16384  # libbpf log kept for error messages
LOG_IN_ERROR_CHARS = 4096  # how much of it a failed load() shows


class BpfError(OSError):
    """A libbpf/bpf() failure: .errno is the errno, str() a message a user can act on."""

    def __init__(self, err: int, message: str) -> None:
        super().__init__(err, message)
        self.message = message

    def __str__(self) -> str:
        return self.message


def _strerror(err: int) -> str:
    return "operation not supported" if err == ENOTSUPP else os.strerror(err)


def _err(err: int, what: str) -> BpfError:
    return BpfError(err, f"{what}: {_strerror(err)}")


def _check(ret: int, what: str) -> int:
    if ret < 0:
        raise _err(-ret, what)
    return int(ret)


def _ifname(ifindex: int) -> str:
    try:
        return socket.if_indextoname(ifindex)
    except OSError:
        return f"ifindex {ifindex}"


# ---- library loading and prototypes -----------------------------------------------------------

def _load_lib(name: str, fallback: str) -> ctypes.CDLL:
    path = ctypes.util.find_library(name) or fallback
    try:
        return ctypes.CDLL(path, use_errno=True)
    except OSError as e:
        raise BpfError(errno.ENOENT, f"cannot load {fallback} ({e}); is libbpf installed?") from e


_lib = _load_lib("bpf", "libbpf.so.1")
_libc = _load_lib("c", "libc.so.6")

_P, _I, _U32, _SZ = ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32, ctypes.c_size_t
_S = ctypes.c_char_p


def _proto(name: str, restype: object, *argtypes: object, lib: ctypes.CDLL = _lib) -> None:
    fn = getattr(lib, name)
    fn.restype = restype
    fn.argtypes = list(argtypes)


for _name, _res, _args in (
    ("libbpf_version_string", _S, ()),
    ("libbpf_num_possible_cpus", _I, ()),
    ("bpf_object__open_file", _P, (_S, _P)),
    ("bpf_object__load", _I, (_P,)),
    ("bpf_object__close", None, (_P,)),
    ("bpf_object__find_map_by_name", _P, (_P, _S)),
    ("bpf_object__find_program_by_name", _P, (_P, _S)),
    ("bpf_object__next_map", _P, (_P, _P)),
    ("bpf_object__next_program", _P, (_P, _P)),
    ("bpf_map__name", _S, (_P,)),
    ("bpf_map__fd", _I, (_P,)),
    ("bpf_map__type", _I, (_P,)),
    ("bpf_map__key_size", _U32, (_P,)),
    ("bpf_map__value_size", _U32, (_P,)),
    ("bpf_map__max_entries", _U32, (_P,)),
    ("bpf_map__map_flags", _U32, (_P,)),
    ("bpf_map__set_max_entries", _I, (_P, _U32)),
    ("bpf_map__set_initial_value", _I, (_P, _P, _SZ)),
    ("bpf_map__set_pin_path", _I, (_P, _S)),
    ("bpf_program__name", _S, (_P,)),
    ("bpf_program__fd", _I, (_P,)),
    ("bpf_program__type", _I, (_P,)),
    ("bpf_map_lookup_elem", _I, (_I, _P, _P)),
    ("bpf_map_update_elem", _I, (_I, _P, _P, ctypes.c_uint64)),
    ("bpf_map_delete_elem", _I, (_I, _P)),
    ("bpf_map_get_next_key", _I, (_I, _P, _P)),
    ("bpf_map_lookup_batch", _I, (_I, _P, _P, _P, _P, ctypes.POINTER(_U32), _P)),
    ("bpf_map_update_batch", _I, (_I, _P, _P, ctypes.POINTER(_U32), _P)),
    ("bpf_map_delete_batch", _I, (_I, _P, ctypes.POINTER(_U32), _P)),
    ("bpf_obj_pin", _I, (_I, _S)),
    ("bpf_obj_get", _I, (_S,)),
    ("bpf_obj_get_info_by_fd", _I, (_I, _P, ctypes.POINTER(_U32))),
    ("bpf_prog_test_run_opts", _I, (_I, _P)),
    ("bpf_link_create", _I, (_I, _I, _I, _P)),
    ("bpf_link_update", _I, (_I, _I, _P)),
    ("bpf_link_detach", _I, (_I,)),
    ("ring_buffer__new", _P, (_I, _P, _P, _P)),
    ("ring_buffer__free", None, (_P,)),
    ("ring_buffer__poll", _I, (_P, _I)),
    ("ring_buffer__consume", _I, (_P,)),
    ("ring_buffer__epoll_fd", _I, (_P,)),
    ("bpf_tc_hook_create", _I, (_P,)),
    ("bpf_tc_hook_destroy", _I, (_P,)),
    ("bpf_tc_attach", _I, (_P, _P)),
    ("bpf_tc_detach", _I, (_P, _P)),
    ("bpf_tc_query", _I, (_P, _P)),
    ("libbpf_set_print", _P, (_P,)),
):
    _proto(_name, _res, *_args)
_proto("free", None, _P, lib=_libc)
_proto("vsnprintf", _I, _P, _SZ, _S, _P, lib=_libc)
_HAVE_VASPRINTF = hasattr(_libc, "vasprintf")
if _HAVE_VASPRINTF:
    _proto("vasprintf", _I, ctypes.POINTER(_P), _S, _P, lib=_libc)


def libbpf_version() -> str:
    return (_lib.libbpf_version_string() or b"?").decode()


@functools.cache
def num_possible_cpus() -> int:
    return _check(_lib.libbpf_num_possible_cpus(), "counting possible CPUs")


# ---- libbpf's own log -> logging, with a tail kept for error messages ---------------------------

class _LogTail:
    def __init__(self) -> None:
        self.text = ""

    def add(self, text: str) -> None:
        self.text = (self.text + text)[-LOG_TAIL_CHARS:]

    def take(self) -> str:
        text, self.text = self.text, ""
        return text


_log_tail = _LogTail()
_PRINT_FN = ctypes.CFUNCTYPE(_I, _I, _S, _P)
_LEVELS = {0: logging.WARNING, 1: logging.INFO, 2: logging.DEBUG}  # enum libbpf_print_level


def _format(fmt: bytes, va_list: int | None) -> str:
    # va_list arrives as a pointer (x86_64 and aarch64 pass it by reference); it can be consumed
    # only once, so vasprintf (one pass, any length) beats a retry with a bigger buffer
    if _HAVE_VASPRINTF:
        out = _P()
        n = _libc.vasprintf(ctypes.byref(out), fmt, va_list)
        if n < 0 or not out.value:
            return fmt.decode(errors="replace")
        try:
            return ctypes.string_at(out.value, n).decode(errors="replace")
        finally:
            _libc.free(out)
    buf = ctypes.create_string_buffer(65536)
    _libc.vsnprintf(buf, len(buf), fmt, va_list)
    return buf.value.decode(errors="replace")


def _on_libbpf_print(level: int, fmt: bytes | None, va_list: int | None) -> int:
    try:
        pylevel = _LEVELS.get(level, logging.DEBUG)
        if fmt is None or (pylevel == logging.DEBUG and not log.isEnabledFor(logging.DEBUG)):
            return 0  # debug chatter is only formatted when someone listens
        text = _format(fmt, va_list)
        _log_tail.add(text)
        log.log(pylevel, "%s", text.rstrip("\n"))
    except Exception:  # an exception must never unwind into C
        pass
    return 0


_print_cb = _PRINT_FN(_on_libbpf_print)  # module global: libbpf keeps the pointer forever
_lib.libbpf_set_print(ctypes.cast(_print_cb, _P))


# ---- info by fd -------------------------------------------------------------------------------

class _MapInfo(ctypes.Structure):
    _fields_ = [("type", _U32), ("id", _U32), ("key_size", _U32), ("value_size", _U32),
                ("max_entries", _U32), ("map_flags", _U32), ("name", ctypes.c_char * 16),
                ("ifindex", _U32), ("btf_vmlinux_value_type_id", _U32),
                ("netns_dev", ctypes.c_uint64), ("netns_ino", ctypes.c_uint64),
                ("btf_id", _U32), ("btf_key_type_id", _U32), ("btf_value_type_id", _U32),
                ("pad", _U32), ("map_extra", ctypes.c_uint64)]


class _ProgInfoHead(ctypes.Structure):
    # the kernel accepts a shorter info struct and fills only what fits
    _fields_ = [("type", _U32), ("id", _U32)]


class _LinkInfoHead(ctypes.Structure):
    # type, id, prog_id, then an 8-aligned union whose xdp/tcx member starts with ifindex
    _fields_ = [("type", _U32), ("id", _U32), ("prog_id", _U32), ("pad", _U32),
                ("ifindex", _U32), ("pad2", _U32)]


def _info(fd: int, info: ctypes.Structure, what: str) -> None:
    size = _U32(ctypes.sizeof(info))
    _check(_lib.bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(size)), what)


def prog_id(fd: int) -> int:
    info = _ProgInfoHead()
    _info(fd, info, f"reading program info of fd {fd}")
    return int(info.id)


def _obj_get(path: str, kind: str) -> int:
    fd = int(_lib.bpf_obj_get(path.encode()))
    if fd < 0:
        raise _err(-fd, f"{path}: cannot open pinned {kind}")
    return fd


def _pin(fd: int, path: str, kind: str) -> None:
    _check(_lib.bpf_obj_pin(fd, path.encode()), f"{path}: cannot pin {kind}")


def _unpin(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


# ---- maps -------------------------------------------------------------------------------------

class BpfMap:
    """A map of a loaded object (fd owned by the object) or opened from a pin (fd owned here)."""

    def __init__(self, name: str, fd: int, type: int, key_size: int, value_size: int,
                 max_entries: int, flags: int = 0, owned: bool = False) -> None:
        self.name, self.fd, self.type = name, fd, type
        self.key_size, self.value_size, self.max_entries, self.flags = \
            key_size, value_size, max_entries, flags
        self._owned = owned

    def __repr__(self) -> str:
        return f"BpfMap({self.name!r}, fd={self.fd}, type={self.type})"

    @property
    def percpu(self) -> bool:
        return self.type in PERCPU_MAP_TYPES

    @property
    def percpu_stride(self) -> int:
        return (self.value_size + 7) & ~7

    @property
    def _value_buf_size(self) -> int:
        """What the kernel copies for one value: per-CPU maps hold one 8-aligned slot per CPU."""
        return self.percpu_stride * num_possible_cpus() if self.percpu else self.value_size

    def _key(self, key: bytes) -> bytes:
        # the kernel reads key_size bytes from our pointer: a short buffer would leak memory.
        # It only reads a key, so the bytes object's own buffer is passed, not a copy.
        if len(key) != self.key_size:
            raise ValueError(f"map {self.name}: key is {len(key)} bytes, expected {self.key_size}")
        return bytes(key)

    def lookup(self, key: bytes) -> bytes | None:
        """The value, or None if absent. Per-CPU maps: all CPUs' slots concatenated."""
        value = ctypes.create_string_buffer(self._value_buf_size)
        ret = _lib.bpf_map_lookup_elem(self.fd, self._key(key), value)
        if ret == -errno.ENOENT:
            return None
        _check(ret, f"map {self.name}: lookup")
        return value.raw

    def lookup_percpu(self, key: bytes) -> list[bytes]:
        if not self.percpu:
            raise ValueError(f"map {self.name} is not a per-CPU map")
        raw = self.lookup(key)
        if raw is None:
            return []
        n = self.percpu_stride
        return [raw[i:i + self.value_size] for i in range(0, len(raw), n)]

    def update(self, key: bytes, value: bytes, flags: int = BPF_ANY) -> None:
        """Per-CPU maps take either all CPUs' slots or one value_size value for every CPU."""
        if self.percpu and len(value) == self.value_size:
            value = value.ljust(self.percpu_stride, b"\0") * num_possible_cpus()
        if len(value) != self._value_buf_size:
            raise ValueError(f"map {self.name}: value is {len(value)} bytes, "
                             f"expected {self._value_buf_size}")
        # read by the kernel only: passed as it is, like the key
        _check(_lib.bpf_map_update_elem(self.fd, self._key(key), bytes(value), flags),
               f"map {self.name}: update")

    def delete(self, key: bytes) -> bool:
        ret = _lib.bpf_map_delete_elem(self.fd, self._key(key))
        if ret == -errno.ENOENT:
            return False
        _check(ret, f"map {self.name}: delete")
        return True

    def update_batch(self, items: list[tuple[bytes, bytes]]) -> None:
        """update() of each item, in order, in one syscall (a non-per-CPU map). Raises as
        update() would for the first item the kernel refused; the items before it are
        written, those after it are not."""
        for key, value in items:
            if len(key) != self.key_size or len(value) != self.value_size:
                raise ValueError(f"map {self.name}: batch item of {len(key)}/{len(value)} "
                                 f"bytes, expected {self.key_size}/{self.value_size}")
        keys = b"".join(key for key, _ in items)
        values = b"".join(value for _, value in items)
        count = _U32(len(items))
        ret = _lib.bpf_map_update_batch(self.fd, keys, values, ctypes.byref(count), None)
        if ret < 0 and -ret in (errno.EINVAL, errno.EOPNOTSUPP, ENOTSUPP) and count.value == 0:
            count.value = 0     # no batch operations (before Linux 5.6): one at a time
            for key, value in items:
                self.update(key, value)
            return
        _check(ret, f"map {self.name}: update")

    def delete_batch(self, keys: list[bytes]) -> int:
        """delete() of each key in as few syscalls as the kernel allows (it stops at a key
        that is not there); how many were there."""
        size, done, deleted = self.key_size, 0, 0
        if any(len(key) != size for key in keys):
            raise ValueError(f"map {self.name}: batch key of the wrong size, expected {size}")
        buf = b"".join(keys)
        while done < len(keys):
            count = _U32(len(keys) - done)
            ret = _lib.bpf_map_delete_batch(self.fd, buf[done * size:], ctypes.byref(count),
                                            None)
            done += count.value
            deleted += count.value
            if ret == -errno.ENOENT:
                done += 1       # absent: skipped
            elif ret < 0 and -ret in (errno.EINVAL, errno.EOPNOTSUPP, ENOTSUPP) and \
                    count.value == 0:
                return deleted + sum(self.delete(key) for key in keys[done:])
            else:
                _check(ret, f"map {self.name}: delete")
        return deleted

    def keys(self) -> Iterator[bytes]:
        cur: ctypes.Array[ctypes.c_char] | None = None
        nxt = ctypes.create_string_buffer(self.key_size)
        while True:
            ret = _lib.bpf_map_get_next_key(self.fd, cur, nxt)
            if ret == -errno.ENOENT:
                return
            _check(ret, f"map {self.name}: iterating keys")
            yield nxt.raw
            cur = ctypes.create_string_buffer(nxt.raw, self.key_size)

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        for key in self.keys():
            value = self.lookup(key)
            if value is not None:  # deleted between next_key and lookup
                yield key, value

    def lookup_batch(self, batch: int = 256) -> list[tuple[bytes, bytes]]:
        """All entries in as few syscalls as possible; per-CPU values as in lookup()."""
        return [item for chunk in self.batches(batch) for item in chunk]

    def batches(self, batch: int = 256) -> Iterator[list[tuple[bytes, bytes]]]:
        """The entries, a syscall's worth (about `batch`) at a time: a caller may stop between
        two and go on later (hash maps resume at the next bucket; entries added meanwhile to
        buckets already read are not seen)."""
        vsize, ks = self._value_buf_size, self.key_size
        # batch token: a u32 bucket for hash maps, a key for arrays
        tok_in = ctypes.create_string_buffer(max(self.key_size, 8))
        tok_out = ctypes.create_string_buffer(max(self.key_size, 8))
        first = True
        while True:
            ret, n, k, v = self._lookup_batch(None if first else tok_in, tok_out, batch)
            if ret == -errno.ENOSPC and n == 0:
                batch *= 2  # one hash bucket holds more entries than the batch
                continue
            if ret < 0 and ret != -errno.ENOENT:
                if first and -ret in (errno.EINVAL, errno.EOPNOTSUPP, ENOTSUPP):
                    yield list(self.items())  # map type without batch ops
                    return
                _check(ret, f"map {self.name}: batch lookup")
            chunk = [(k[i * ks:(i + 1) * ks], v[i * vsize:(i + 1) * vsize]) for i in range(n)]
            del k, v    # a caller may pause between two batches: hold only what it was given
            yield chunk
            if ret == -errno.ENOENT:
                return
            first = False
            tok_in, tok_out = tok_out, tok_in

    def _lookup_batch(self, tok_in: ctypes.Array[ctypes.c_char] | None,
                      tok_out: ctypes.Array[ctypes.c_char], batch: int) \
            -> tuple[int, int, bytes, bytes]:
        """One BPF_MAP_LOOKUP_BATCH: its return code, how many entries, their keys and values
        packed (the buffers go when it returns)."""
        keys = ctypes.create_string_buffer(self.key_size * batch)
        values = ctypes.create_string_buffer(self._value_buf_size * batch)
        count = _U32(batch)
        ret = _lib.bpf_map_lookup_batch(self.fd, tok_in, tok_out, keys, values,
                                        ctypes.byref(count), None)
        n = count.value     # one copy of what was filled, not .raw's whole buffer sliced
        return ret, n, ctypes.string_at(keys, n * self.key_size), \
            ctypes.string_at(values, n * self._value_buf_size)

    def pin(self, path: str) -> None:
        _pin(self.fd, path, f"map {self.name}")

    def unpin(self, path: str) -> None:
        _unpin(path)

    def close(self) -> None:
        if self._owned and self.fd >= 0:
            os.close(self.fd)
        self.fd = -1

    def __enter__(self) -> BpfMap:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_pinned_map(path: str) -> BpfMap:
    """Open a pinned map without loading an object; close() closes the fd."""
    fd = _obj_get(path, "map")
    try:
        with open(f"/proc/self/fdinfo/{fd}") as f:
            if "map_type:" not in f.read():
                raise BpfError(errno.EINVAL, f"{path}: pinned object is not a map")
        info = _MapInfo()
        _info(fd, info, f"{path}: reading map info")
    except BaseException:
        os.close(fd)
        raise
    return BpfMap(info.name.decode(), fd, info.type, info.key_size, info.value_size,
                  info.max_entries, info.map_flags, owned=True)


# ---- programs ---------------------------------------------------------------------------------

class _TestRunOpts(ctypes.Structure):
    _fields_ = [("sz", _SZ), ("data_in", _P), ("data_out", _P), ("data_size_in", _U32),
                ("data_size_out", _U32), ("ctx_in", _P), ("ctx_out", _P), ("ctx_size_in", _U32),
                ("ctx_size_out", _U32), ("retval", _U32), ("repeat", _I), ("duration", _U32),
                ("flags", _U32), ("cpu", _U32), ("batch_size", _U32)]


@dataclass
class TestRunResult:
    __test__ = False  # not a pytest class despite the name
    retval: int
    data: bytes
    duration_ns: int
    ctx: bytes


class BpfProgram:
    def __init__(self, name: str, fd: int, type: int) -> None:
        self.name, self.fd, self.type = name, fd, type

    def __repr__(self) -> str:
        return f"BpfProgram({self.name!r}, fd={self.fd}, type={self.type})"

    @property
    def id(self) -> int:
        return prog_id(self.fd)

    def pin(self, path: str) -> None:
        _pin(self.fd, path, f"program {self.name}")

    def test_run(self, data: bytes, ctx: bytes | None = None, repeat: int = 1,
                 data_out_size: int | None = None, ctx_out_size: int = 0, flags: int = 0,
                 batch_size: int = 0) -> TestRunResult:
        """BPF_PROG_TEST_RUN; data_out has room for headers the program pushes."""
        data_in = ctypes.create_string_buffer(data, len(data))
        data_out = ctypes.create_string_buffer(
            len(data) + 512 if data_out_size is None else data_out_size)
        ctx_in = ctypes.create_string_buffer(ctx, len(ctx)) if ctx is not None else None
        ctx_out = ctypes.create_string_buffer(ctx_out_size) if ctx_out_size else None
        opts = _TestRunOpts(
            sz=ctypes.sizeof(_TestRunOpts),
            data_in=ctypes.cast(data_in, _P), data_size_in=len(data),
            data_out=ctypes.cast(data_out, _P), data_size_out=len(data_out),
            ctx_in=ctypes.cast(ctx_in, _P) if ctx_in is not None else None,
            ctx_size_in=len(ctx) if ctx is not None else 0,
            ctx_out=ctypes.cast(ctx_out, _P) if ctx_out is not None else None,
            ctx_size_out=ctx_out_size, repeat=repeat, flags=flags, batch_size=batch_size)
        _check(_lib.bpf_prog_test_run_opts(self.fd, ctypes.byref(opts)),
               f"program {self.name}: test run")
        return TestRunResult(
            retval=opts.retval, data=data_out.raw[:opts.data_size_out],
            duration_ns=opts.duration,
            ctx=ctx_out.raw[:opts.ctx_size_out] if ctx_out is not None else b"")


# ---- objects ----------------------------------------------------------------------------------

class BpfObject:
    """An ELF object: open, adjust (.rodata, sizes, pins), load, then use its maps/programs."""

    def __init__(self, path: str) -> None:
        self.path = path
        if not os.path.isfile(path):
            raise BpfError(errno.ENOENT, f"{path}: BPF object file not found")
        _log_tail.take()
        self._obj: int | None = _lib.bpf_object__open_file(path.encode(), None)
        if not self._obj:
            err = ctypes.get_errno() or errno.EINVAL
            raise BpfError(err, f"{path}: cannot open BPF object: {_strerror(err)}"
                           + _log_suffix(_log_tail.take()))
        self.loaded = False

    def _handle(self) -> int:
        if not self._obj:
            raise BpfError(errno.EBADF, f"{self.path}: object is closed")
        return int(self._obj)

    def _map_ptr(self, name: str) -> int:
        ptr = _lib.bpf_object__find_map_by_name(self._handle(), name.encode())
        if not ptr:
            raise BpfError(errno.ENOENT, f"{self.path}: no map named {name}")
        return int(ptr)

    @staticmethod
    def _wrap_map(ptr: int) -> BpfMap:
        return BpfMap(_lib.bpf_map__name(ptr).decode(), _lib.bpf_map__fd(ptr),
                      _lib.bpf_map__type(ptr), _lib.bpf_map__key_size(ptr),
                      _lib.bpf_map__value_size(ptr), _lib.bpf_map__max_entries(ptr),
                      _lib.bpf_map__map_flags(ptr))

    @staticmethod
    def _wrap_prog(ptr: int) -> BpfProgram:
        return BpfProgram(_lib.bpf_program__name(ptr).decode(), _lib.bpf_program__fd(ptr),
                          _lib.bpf_program__type(ptr))

    def _before_load(self, what: str) -> None:
        if self.loaded:
            raise BpfError(errno.EBUSY, f"{self.path}: {what} must happen before load()")

    def set_rodata(self, section: str, data: bytes) -> None:
        """Initial contents of a read-only data section such as .rodata.config."""
        self._before_load(f"setting {section}")
        ptr = self._map_ptr(section)
        size = _lib.bpf_map__value_size(ptr)
        if len(data) != size:
            raise BpfError(errno.EINVAL, f"{self.path}: {section} is {size} bytes, "
                                         f"got {len(data)} (object and config out of step?)")
        buf = ctypes.create_string_buffer(data, len(data))
        _check(_lib.bpf_map__set_initial_value(ptr, buf, len(data)), f"{self.path}: set {section}")

    def set_max_entries(self, map_name: str, n: int) -> None:
        self._before_load(f"resizing {map_name}")
        _check(_lib.bpf_map__set_max_entries(self._map_ptr(map_name), n),
               f"{self.path}: set max_entries of {map_name}")

    def set_pin_path(self, map_name: str, path: str) -> None:
        """At load libbpf reuses a compatible map pinned there (re-adoption), else pins it."""
        self._before_load(f"setting the pin path of {map_name}")
        _check(_lib.bpf_map__set_pin_path(self._map_ptr(map_name), path.encode()),
               f"{self.path}: set pin path of {map_name}")

    def load(self) -> None:
        _log_tail.take()
        ret = _lib.bpf_object__load(self._handle())
        if ret < 0:
            raise BpfError(-ret, f"{self.path}: load failed: {_strerror(-ret)}"
                           + _log_suffix(_log_tail.take()))
        self.loaded = True

    def map(self, name: str) -> BpfMap:
        return self._wrap_map(self._map_ptr(name))

    def program(self, name: str) -> BpfProgram:
        ptr = _lib.bpf_object__find_program_by_name(self._handle(), name.encode())
        if not ptr:
            raise BpfError(errno.ENOENT, f"{self.path}: no program named {name}")
        return self._wrap_prog(ptr)

    def maps(self) -> list[BpfMap]:
        out, ptr = [], _lib.bpf_object__next_map(self._handle(), None)
        while ptr:
            out.append(self._wrap_map(ptr))
            ptr = _lib.bpf_object__next_map(self._obj, ptr)
        return out

    def programs(self) -> list[BpfProgram]:
        out, ptr = [], _lib.bpf_object__next_program(self._handle(), None)
        while ptr:
            out.append(self._wrap_prog(ptr))
            ptr = _lib.bpf_object__next_program(self._obj, ptr)
        return out

    def close(self) -> None:
        if self._obj:
            _lib.bpf_object__close(self._obj)
            self._obj = None

    def __enter__(self) -> BpfObject:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _log_suffix(text: str) -> str:
    text = text.strip()
    if not text:
        return ""
    if len(text) > LOG_IN_ERROR_CHARS:
        text = "..." + text[-LOG_IN_ERROR_CHARS:]
    return "\nlibbpf log:\n" + text


# ---- ring buffer ------------------------------------------------------------------------------

_SAMPLE_FN = ctypes.CFUNCTYPE(_I, _P, _P, _SZ)


class RingBuffer:
    """Consumer of a BPF_MAP_TYPE_RINGBUF; the callback gets each record as bytes."""

    def __init__(self, map: BpfMap, callback: Callable[[bytes], None]) -> None:
        self._callback = callback
        self._error: BaseException | None = None
        self._cb = _SAMPLE_FN(self._on_sample)  # referenced here so it outlives the C side
        self._rb: int | None = _lib.ring_buffer__new(map.fd, ctypes.cast(self._cb, _P), None, None)
        if not self._rb:
            raise _err(ctypes.get_errno() or errno.EINVAL, f"map {map.name}: ring buffer")

    def _on_sample(self, _ctx: int | None, data: int | None, size: int) -> int:
        try:
            self._callback(ctypes.string_at(data, size) if data else b"")
            return 0
        except BaseException as e:  # keep it for poll(); a negative return stops consuming
            self._error = e
            return -errno.ECANCELED

    def _finish(self, ret: int, what: str) -> int:
        if self._error is not None:
            err, self._error = self._error, None
            raise err
        if ret == -errno.EINTR:
            return 0
        return _check(ret, f"ring buffer {what}")

    def poll(self, timeout_ms: int) -> int:
        """Wait up to timeout_ms for records and consume them; returns how many."""
        return self._finish(_lib.ring_buffer__poll(self._handle(), timeout_ms), "poll")

    def consume(self) -> int:
        return self._finish(_lib.ring_buffer__consume(self._handle()), "consume")

    def fileno(self) -> int:
        return _check(_lib.ring_buffer__epoll_fd(self._handle()), "ring buffer epoll fd")

    def _handle(self) -> int:
        if not self._rb:
            raise BpfError(errno.EBADF, "ring buffer is closed")
        return int(self._rb)

    def close(self) -> None:
        if self._rb:
            _lib.ring_buffer__free(self._rb)
            self._rb = None

    def __enter__(self) -> RingBuffer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---- links and XDP ----------------------------------------------------------------------------

@dataclass
class LinkInfo:
    type: int
    id: int
    prog_id: int
    ifindex: int  # XDP/tcx links; 0 for other kinds


class Link:
    """A bpf_link fd. Closing the last reference to an unpinned link detaches it."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def info(self) -> LinkInfo:
        i = _LinkInfoHead()
        _info(self.fd, i, "reading link info")
        return LinkInfo(i.type, i.id, i.prog_id, i.ifindex)

    def pin(self, path: str) -> None:
        _pin(self.fd, path, "link")

    def unpin(self, path: str) -> None:
        _unpin(path)

    def update_program(self, prog_fd: int) -> None:
        _check(_lib.bpf_link_update(self.fd, prog_fd, None), "replacing the program of a link")

    def detach(self) -> None:
        """Detach now, even while pinned or held elsewhere."""
        _check(_lib.bpf_link_detach(self.fd), "detaching link")

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Link:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_pinned_link(path: str) -> Link:
    return Link(_obj_get(path, "link"))


# ---- everyone's links (what else is attached) -------------------------------------------------

BPF_LINK_TYPE_TCX, BPF_LINK_TYPE_NETKIT = 11, 13
_proto("bpf_link_get_next_id", _I, _U32, ctypes.POINTER(_U32))
_proto("bpf_link_get_fd_by_id", _I, _U32)
_proto("bpf_prog_get_fd_by_id", _I, _U32)


class _ProgInfoName(ctypes.Structure):
    # struct bpf_prog_info up to its name
    _fields_ = [("type", _U32), ("id", _U32), ("tag", ctypes.c_uint8 * 8),
                ("jited_prog_len", _U32), ("xlated_prog_len", _U32),
                ("jited_prog_insns", ctypes.c_uint64), ("xlated_prog_insns", ctypes.c_uint64),
                ("load_time", ctypes.c_uint64), ("created_by_uid", _U32),
                ("nr_map_ids", _U32), ("map_ids", ctypes.c_uint64), ("name", ctypes.c_char * 16)]


def all_links() -> list[tuple[LinkInfo, str]]:
    """Every BPF link on the system with its program's name (needs CAP_SYS_ADMIN); links
    that go away while listed are skipped."""
    out = []
    link_id = _U32(0)
    while _lib.bpf_link_get_next_id(link_id, ctypes.byref(link_id)) == 0:
        fd = int(_lib.bpf_link_get_fd_by_id(link_id))
        if fd < 0:
            continue
        with Link(fd) as link:
            try:
                info = link.info()
            except BpfError:
                continue
        out.append((info, _prog_name(info.prog_id)))
    return out


def _prog_name(prog: int) -> str:
    fd = int(_lib.bpf_prog_get_fd_by_id(prog))
    if fd < 0:
        return ""
    try:
        info = _ProgInfoName()
        _info(fd, info, f"reading program {prog}")
        return info.name.decode(errors="replace")
    except BpfError:
        return ""
    finally:
        os.close(fd)


class _LinkCreateOpts(ctypes.Structure):
    _fields_ = [("sz", _SZ), ("flags", _U32)]  # later fields: zero for XDP


_XDP_ERRORS = {
    errno.EBUSY: "another XDP program is attached (not ours); detach it or use mode tc",
    errno.EEXIST: "another XDP program is attached (not ours); detach it or use mode tc",
    errno.ENODEV: "no such interface",
    errno.EPERM: "not permitted (needs root / CAP_BPF + CAP_NET_ADMIN)",
    errno.ERANGE: "MTU too large for native XDP; lower it or use mode xdp-generic or tc",
}


def xdp_attach(prog: BpfProgram | int, ifindex: int, mode: str) -> Link:
    """Attach an XDP program through a bpf_link; mode "native" or "generic"."""
    if mode not in XDP_MODE_FLAGS:
        raise ValueError(f"XDP mode must be one of {sorted(XDP_MODE_FLAGS)}, not {mode!r}")
    fd = prog.fd if isinstance(prog, BpfProgram) else prog
    opts = _LinkCreateOpts(sz=ctypes.sizeof(_LinkCreateOpts), flags=XDP_MODE_FLAGS[mode])
    ret = _lib.bpf_link_create(fd, ifindex, BPF_XDP, ctypes.byref(opts))
    if ret >= 0:
        return Link(ret)
    err, name = -ret, _ifname(ifindex)
    if err in _XDP_ERRORS:
        msg = _XDP_ERRORS[err]
    elif mode == "native" and err in (errno.EOPNOTSUPP, errno.EINVAL, ENOTSUPP):
        msg = "the driver has no native XDP support; use mode xdp-generic or tc"
    else:
        msg = f"{mode} XDP attach failed: {_strerror(err)}"
    raise BpfError(err, f"{name}: {msg}")


# ---- tc (clsact + cls_bpf, ingress) ------------------------------------------------------------

class _TcHook(ctypes.Structure):
    _fields_ = [("sz", _SZ), ("ifindex", _I), ("attach_point", _I), ("parent", _U32)]


class _TcOpts(ctypes.Structure):
    _fields_ = [("sz", _SZ), ("prog_fd", _I), ("flags", _U32), ("prog_id", _U32),
                ("handle", _U32), ("priority", _U32)]


def _hook(ifindex: int, point: int = BPF_TC_INGRESS) -> _TcHook:
    return _TcHook(sz=ctypes.sizeof(_TcHook), ifindex=ifindex, attach_point=point)


def _tc_opts(handle: int, priority: int, prog_fd: int = 0, flags: int = 0) -> _TcOpts:
    return _TcOpts(sz=ctypes.sizeof(_TcOpts), prog_fd=prog_fd, flags=flags,
                   handle=handle, priority=priority)


def tc_hook_create(ifindex: int) -> bool:
    """Ensure a clsact qdisc; True if we created it, False if it was already there."""
    ret = _lib.bpf_tc_hook_create(ctypes.byref(_hook(ifindex)))
    if ret == -errno.EEXIST:
        return False
    _check(ret, f"{_ifname(ifindex)}: creating clsact qdisc")
    return True


def _tc_point(egress: bool) -> tuple[int, str]:
    return (BPF_TC_EGRESS, "egress") if egress else (BPF_TC_INGRESS, "ingress")


def tc_attach(ifindex: int, prog_fd: int, handle: int, priority: int,
              replace: bool = False, egress: bool = False) -> None:
    point, where = _tc_point(egress)
    opts = _tc_opts(handle, priority, prog_fd, BPF_TC_F_REPLACE if replace else 0)
    ret = _lib.bpf_tc_attach(ctypes.byref(_hook(ifindex, point)), ctypes.byref(opts))
    if ret == -errno.EEXIST:
        raise BpfError(errno.EEXIST, f"{_ifname(ifindex)}: a tc {where} filter with handle "
                                     f"{handle:#x} priority {priority:#x} already exists")
    _check(ret, f"{_ifname(ifindex)}: attaching tc {where} filter")


def tc_detach(ifindex: int, handle: int, priority: int, egress: bool = False) -> bool:
    """Delete our filter; False if it was not there."""
    point, where = _tc_point(egress)
    ret = _lib.bpf_tc_detach(ctypes.byref(_hook(ifindex, point)),
                             ctypes.byref(_tc_opts(handle, priority)))
    if ret in (-errno.ENOENT, -errno.EINVAL):  # EINVAL: no clsact qdisc at all
        return False
    _check(ret, f"{_ifname(ifindex)}: detaching tc {where} filter")
    return True


def tc_query(ifindex: int, handle: int, priority: int, egress: bool = False) -> int | None:
    """Program id of the filter at handle/priority, None if there is none."""
    point, where = _tc_point(egress)
    opts = _tc_opts(handle, priority)
    ret = _lib.bpf_tc_query(ctypes.byref(_hook(ifindex, point)), ctypes.byref(opts))
    if ret in (-errno.ENOENT, -errno.EINVAL):
        return None
    _check(ret, f"{_ifname(ifindex)}: querying tc {where} filter")
    return int(opts.prog_id)


def tc_hook_destroy(ifindex: int) -> bool:
    """Delete the clsact qdisc (both directions: libbpf only deletes the qdisc for
    INGRESS|EGRESS; for INGRESS alone it would just flush filters). False if none."""
    ret = _lib.bpf_tc_hook_destroy(ctypes.byref(_hook(ifindex, BPF_TC_INGRESS | BPF_TC_EGRESS)))
    if ret in (-errno.ENOENT, -errno.EINVAL):
        return False
    _check(ret, f"{_ifname(ifindex)}: deleting clsact qdisc")
    return True
