# SPDX-License-Identifier: GPL-2.0-only
"""The per-tag objects on the real kernel through BPF_PROG_TEST_RUN: RX parse on a conduit,
FORWARD with strip / re-tag / push compared byte for byte with frames built from the kernel's
tag formats (tests/dsa_frames.py), TX parse through a test object built from the same headers,
and frames that must pass."""
from __future__ import annotations

import ctypes
import itertools
import struct
from pathlib import Path
from typing import Iterator

import pytest

from fw_ebpf import dsa, maps
from fw_ebpf.libbpf import BpfObject
from conftest import requires_root
from dsa_frames import HEAD, ORACLES, TAIL, tag_frame
from fastpath import (HOOKS, L2, L2_IN, L2_OUT, LO_IFINDEX, FastPath, Hook,
                      checksums_verify, flow_tuple, forwarded_frame, frame, load_fastpath,
                      nat_tuple)
import wire

pytestmark = requires_root
TAGS = list(ORACLES)
IN_FRONT = [t for t in TAGS if ORACLES[t].position != TAIL]




def every_tag(marked: object) -> object:
    """For a test that applies to tail tags as well (the default: tags the objects parse)."""
    return pytest.mark.tags(lambda _tag: True)(marked)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Each test runs for the tags it applies to: its `tags` mark's predicate, or the tags the
    objects parse (tail tags pass to the stack: test_tail_tag_frames_pass)."""
    if "tag" in metafunc.fixturenames:
        mark = metafunc.definition.get_closest_marker("tags")
        applies = mark.args[0] if mark else (lambda t: t in IN_FRONT)
        metafunc.parametrize("tag", [t for t in TAGS if applies(t)], indirect=True,
                             scope="module")


@pytest.fixture(scope="module")
def tag(request: pytest.FixtureRequest) -> str:
    return request.param


def _load(path: Path, conduit: bool) -> FastPath:
    fp = load_fastpath(path, heartbeat_timeout_s=600,
                       dsa_conduits=(LO_IFINDEX,) if conduit else ())
    fp.heartbeat()
    return fp


@pytest.fixture(scope="module")
def objects(bpf_build: Path, tag: str) -> Iterator[dict[str, FastPath]]:
    """The tag's object twice: on a conduit (test runs come in on lo) and on another device."""
    path = bpf_build / f"ebpfw-{tag}-{'le' if struct.pack('=H', 1)[0] else 'be'}.o"
    fps = {"conduit": _load(path, True), "other": _load(path, False)}
    yield fps
    for fp in fps.values():
        fp.ring.close()
        fp.obj.close()


@pytest.fixture
def conduit(objects: dict[str, FastPath]) -> FastPath:
    objects["conduit"].reset()
    return objects["conduit"]


@pytest.fixture
def other(objects: dict[str, FastPath]) -> FastPath:
    objects["other"].reset()
    return objects["other"]


def rx_frame(tag: str, port: int, l2: L2, t: maps.Tuple, **kw) -> bytes:
    """What the conduit receives from a client on port: the switch's RX tag on its frame."""
    return tag_frame(tag, frame(l2, t, **kw), ORACLES[tag].rx(port))


def tx_frame(tag: str, port: int, l2_out: L2, post: maps.Tuple, **kw) -> bytes:
    """What the kernel sends to the conduit for the user port: the forwarded frame, tagged."""
    o = ORACLES[tag]
    plain = forwarded_frame(l2_out, post, **kw)
    if l2_out.vlans and o.tx_vlan is not None and \
            (l2_out.tpid == 0x8100 or tag == "mtk"):
        tci = int.from_bytes(plain[14:16], "big")
        return tag_frame(tag, plain, o.tx_vlan(port, l2_out.tpid, tci), o.pad_to,
                         vlan_inside=True)
    return tag_frame(tag, plain, o.tx(port), o.pad_to)


def install(fp: FastPath, t: maps.Tuple, post: maps.Tuple, l2_in: L2, l2_out: L2,
            in_port: int = maps.NO_DSA_PORT, out_port: int = maps.NO_DSA_PORT) -> bytes:
    key = maps.encode_key(LO_IFINDEX, t, dsa_port=in_port, **l2_in.key_fields())
    out = maps.L2Out(**{**l2_out.out().__dict__, "dsa_port": out_port})
    fp.flows.update(key, maps.encode_forward(t, post, LO_IFINDEX, 1500, out))
    return key


def assert_passed(fp: FastPath, hook: Hook, data: bytes, reason: maps.Counter) -> None:
    before = fp.stats()
    res = fp.run(hook, data)
    assert (res.retval, res.data) == (hook.passed, data)
    assert fp.stats()[reason] == before[reason] + 1, f"expected pass reason {reason.name}"


def ports(n: int) -> list[int]:
    return list(range(n))


# ---- RX parse -------------------------------------------------------------------------------

@pytest.mark.parametrize("hook", HOOKS, ids=lambda h: h.name)
def test_rx_tag_from_every_port_keys_the_flow_by_source_port(conduit: FastPath, tag: str,
                                                             hook: Hook):
    t = flow_tuple(4, "udp")
    for port in ports(ORACLES[tag].rx_ports):
        data = rx_frame(tag, port, L2_IN["untagged"], t)
        assert_passed(conduit, hook, data, maps.Counter.PASS_MISS)
        [(kind, info)] = conduit.drain_events()
        assert (kind, info.dsa_port, info.tuple) == (maps.EventType.NEW, port, t), port
        conduit.reset()


@every_tag
@pytest.mark.parametrize("hook", HOOKS, ids=lambda h: h.name)
def test_frames_on_other_devices_have_no_tag_step(other: FastPath, tag: str, hook: Hook):
    t = flow_tuple(6, "tcp")
    assert_passed(other, hook, frame(L2_IN["vlan"], t), maps.Counter.PASS_MISS)
    [(_, info)] = other.drain_events()
    assert (info.dsa_port, info.vlan) == (maps.NO_DSA_PORT, (10, 0))


# ---- FORWARD --------------------------------------------------------------------------------

FAMILIES_L4 = list(itertools.product((4, 6), ("tcp", "udp")))


@pytest.mark.parametrize("hook", HOOKS, ids=lambda h: h.name)
@pytest.mark.parametrize("family,l4", FAMILIES_L4)
@pytest.mark.parametrize("l2_out", ["untagged", "vlan", "qinq", "pppoe"])
def test_forward_from_conduit_to_other_device_strips_the_tag(conduit: FastPath, tag: str,
                                                             hook: Hook, family: int, l4: str,
                                                             l2_out: str):
    t = flow_tuple(family, l4)
    post = nat_tuple(t, "both")
    key = install(conduit, t, post, L2_IN["untagged"], L2_OUT[l2_out], in_port=3)
    res = conduit.run(hook, rx_frame(tag, 3, L2_IN["untagged"], t))
    assert res.retval == hook.forwarded
    assert res.data == forwarded_frame(L2_OUT[l2_out], post)
    assert checksums_verify(res.data)
    assert maps.decode_flow(conduit.flows.lookup(key)).packets == 1


@pytest.mark.parametrize("hook", HOOKS, ids=lambda h: h.name)
@pytest.mark.parametrize("family,l4", FAMILIES_L4)
@pytest.mark.parametrize("l2_in,l2_out", [("untagged", "untagged"), ("vlan", "vlan"),
                                          ("untagged", "qinq"), ("pppoe", "untagged")])
def test_forward_between_ports_of_the_switch_retags(conduit: FastPath, tag: str, hook: Hook,
                                                    family: int, l4: str, l2_in: str,
                                                    l2_out: str):
    t = flow_tuple(family, l4)
    post = nat_tuple(t, "snat")
    out_port = ORACLES[tag].tx_ports - 1
    install(conduit, t, post, L2_IN[l2_in], L2_OUT[l2_out], in_port=1, out_port=out_port)
    res = conduit.run(hook, rx_frame(tag, 1, L2_IN[l2_in], t))
    assert res.retval == hook.forwarded
    assert res.data == tx_frame(tag, out_port, L2_OUT[l2_out], post)
    assert checksums_verify(_untagged(tag, res.data, L2_OUT[l2_out]))


@pytest.mark.parametrize("hook", HOOKS, ids=lambda h: h.name)
@pytest.mark.parametrize("l2_in,l2_out", [("untagged", "untagged"), ("vlan", "vlan"),
                                          ("qinq", "untagged"), ("untagged", "qinq")])
def test_forward_from_other_device_into_every_port_pushes_the_tag(other: FastPath, tag: str,
                                                                  hook: Hook, l2_in: str,
                                                                  l2_out: str):
    t = flow_tuple(4, "tcp")
    post = nat_tuple(t, "dnat")
    for port in ports(ORACLES[tag].tx_ports):
        install(other, t, post, L2_IN[l2_in], L2_OUT[l2_out], out_port=port)
        res = other.run(hook, frame(L2_IN[l2_in], t))
        assert res.retval == hook.forwarded, port
        assert res.data == tx_frame(tag, port, L2_OUT[l2_out], post), port


@pytest.mark.parametrize("hook", HOOKS, ids=lambda h: h.name)
@pytest.mark.parametrize("family", (4, 6))
def test_short_frames_are_padded_before_the_tag_as_the_kernel_does(other: FastPath, tag: str,
                                                                   hook: Hook, family: int):
    t = flow_tuple(family, "tcp")
    post = nat_tuple(t, "snat")
    install(other, t, post, L2_IN["untagged"], L2_OUT["untagged"], out_port=2)
    res = other.run(hook, frame(L2_IN["untagged"], t, payload=b""))
    assert res.retval == hook.forwarded
    assert res.data == tx_frame(tag, 2, L2_OUT["untagged"], post, payload=b"")


@pytest.mark.parametrize("hook", HOOKS, ids=lambda h: h.name)
def test_flow_into_a_port_the_tag_cannot_address_passes(other: FastPath, tag: str, hook: Hook):
    t = flow_tuple(4, "udp")
    install(other, t, nat_tuple(t, "snat"), L2_IN["untagged"], L2_OUT["untagged"],
            out_port=ORACLES[tag].tx_ports if tag not in ("dsa", "edsa") else 0x40)
    assert_passed(other, hook, frame(L2_IN["untagged"], t), maps.Counter.PASS_L2_REWRITE)


# ---- frames that pass -----------------------------------------------------------------------

@pytest.mark.parametrize("hook", HOOKS, ids=lambda h: h.name)
def test_truncated_tagged_frames_pass_unchanged(conduit: FastPath, tag: str, hook: Hook):
    t = flow_tuple(4, "tcp")
    key = install(conduit, t, nat_tuple(t, "both"), L2_IN["vlan"], L2_OUT["untagged"],
                  in_port=2)
    full = rx_frame(tag, 2, L2_IN["vlan"], t)
    for cut in range(14, len(full)):
        data = full[:cut]
        res = conduit.run(hook, data)
        assert (res.retval, res.data) == (hook.passed, data), f"cut at {cut} bytes"
    assert maps.decode_flow(conduit.flows.lookup(key)).packets == 0


@pytest.mark.tags(lambda t: t in IN_FRONT and bool(ORACLES[t].garbled_rx))  # others: no field
@pytest.mark.parametrize("hook", HOOKS, ids=lambda h: h.name)
def test_garbled_tags_pass_unchanged(conduit: FastPath, tag: str, hook: Hook):
    o = ORACLES[tag]
    t = flow_tuple(4, "udp")
    for bad in o.garbled_rx:
        data = tag_frame(tag, frame(L2_IN["untagged"], t), bad)
        assert_passed(conduit, hook, data, maps.Counter.PASS_DSA_TAG)
    assert conduit.drain_events() == []


@pytest.mark.parametrize("hook", HOOKS, ids=lambda h: h.name)
@pytest.mark.parametrize("family", (4, 6))
def test_untagged_frames_on_a_conduit_pass_and_are_counted(conduit: FastPath, tag: str,
                                                           hook: Hook, family: int):
    t = flow_tuple(family, "tcp")
    assert_passed(conduit, hook, frame(L2_IN["untagged"], t), maps.Counter.PASS_DSA_UNTAGGED)


# ---- TX parse (the egress side, #11), through a test object from the same headers ---------

class ParseOut(ctypes.Structure):
    _fields_ = [("ret", ctypes.c_int32), ("dsa_port", ctypes.c_uint8), ("vlans", ctypes.c_uint8),
                ("vlan", ctypes.c_uint16 * 2), ("vlan_tpid", ctypes.c_uint16),
                ("l2_len", ctypes.c_uint16), ("l3proto", ctypes.c_uint8),
                ("l4proto", ctypes.c_uint8), ("sport", ctypes.c_uint16), ("dport", ctypes.c_uint16)]


@pytest.fixture(scope="module")
def parser(bpf_build: Path, tag: str) -> Iterator[BpfObject]:
    root = Path(__file__).resolve().parents[1]
    header = bpf_build / "dsa" / f"dsa-{tag}.h"
    path = wire.build("dsa_parse", tag, (f"-I{root}/bpf", f"-I{root}/bpf/include",
                                         f"-I{bpf_build}/dsa", f'-DEBPFW_DSA_TAG="dsa-{tag}.h"'),
                      deps=(header, root / "bpf" / "parse.h",
                            root / "bpf" / "include" / "ebpfw" / "abi.h"))
    with BpfObject(str(path)) as obj:
        obj.load()
        yield obj


def parse(obj: BpfObject, direction: str, data: bytes) -> ParseOut:
    obj.program(f"dsa_parse_{direction}").test_run(data)
    return ParseOut.from_buffer_copy(obj.map("dsa_parse_out").lookup(bytes(4)))


def test_tx_parse_reads_the_destination_port_of_every_port(parser: BpfObject, tag: str):
    post = nat_tuple(flow_tuple(4, "udp"), "snat")
    for port in ports(ORACLES[tag].tx_ports):
        out = parse(parser, "tx", tx_frame(tag, port, L2_OUT["untagged"], post))
        assert (out.ret, out.dsa_port, out.vlans) == (0, port, 0), port
        assert (out.l3proto, out.l4proto) == (4, 17)
        assert out.sport == struct.unpack("=H", struct.pack("!H", post.sport))[0]


@pytest.mark.parametrize("l2_out", ["vlan", "qinq"])
def test_tx_parse_reads_vlan_tags_beside_or_inside_the_tag(parser: BpfObject, tag: str,
                                                          l2_out: str):
    out_l2 = L2_OUT[l2_out]
    post = nat_tuple(flow_tuple(6, "tcp"), "snat")
    out = parse(parser, "tx", tx_frame(tag, 1, out_l2, post))
    want = (tuple(out_l2.vlans) + (0, 0))[:2]
    assert (out.ret, out.dsa_port, out.vlans, tuple(out.vlan)) == (0, 1, len(out_l2.vlans), want)
    assert out.vlan_tpid == struct.unpack("=H", out_l2.tpid.to_bytes(2, "big"))[0]


def test_tx_parse_of_garbled_tags_fails(parser: BpfObject, tag: str):
    plain = forwarded_frame(L2_OUT["untagged"], nat_tuple(flow_tuple(4, "udp"), "snat"))
    for bad in ORACLES[tag].garbled_tx:
        out = parse(parser, "tx", tag_frame(tag, plain, bad))
        assert out.ret == maps.Counter.PASS_DSA_TAG, bad.hex()


@pytest.mark.tags(lambda t: t in IN_FRONT and ORACLES[t].rx(1) != ORACLES[t].tx(1))
def test_rx_and_tx_formats_differ_where_the_kernel_says(parser: BpfObject, tag: str):
    """An RX tag read as TX (and back) fails where the formats differ (gswip 8 / 4 bytes,
    qca's FROM_CPU bit, brcm's opcodes, ...)."""
    t = flow_tuple(4, "udp")
    rx = rx_frame(tag, 1, L2_IN["untagged"], t)
    assert parse(parser, "rx", rx).dsa_port == 1
    assert parse(parser, "tx", rx).ret != 0 or parse(parser, "tx", rx).dsa_port != 1


def _untagged(tag: str, data: bytes, l2_out: L2) -> bytes:
    """The frame without its DSA tag (VLAN restored), for checksum checks."""
    o = ORACLES[tag]
    n = len(o.tx(0))
    if o.position == HEAD:
        return data[n:]
    if l2_out.vlans and o.tx_vlan is not None and (l2_out.tpid == 0x8100 or tag == "mtk"):
        tci = data[12 + n - 2:12 + n]
        return data[:12] + l2_out.tpid.to_bytes(2, "big") + tci + data[12 + n:]
    return data[:12] + data[12 + n:]


# ---- the rendered headers and the objects agree with the table ------------------------------

@every_tag
def test_rendered_headers_are_the_templates_output(bpf_build: Path, tag: str):
    assert (bpf_build / "dsa" / f"dsa-{tag}.h").read_text() == dsa.render(dsa.TAGS[tag])


@every_tag
def test_rendered_header_says_what_the_table_says(bpf_build: Path, tag: str, tmp_path: Path):
    t = dsa.TAGS[tag]
    names = ["DSA_RX_LEN", "DSA_TX_LEN", "DSA_PORTS", "DSA_PAD_TO", "DSA_ETHERTYPE"]
    src = tmp_path / "probe.c"
    src.write_text("#include <stdio.h>\n" + _header_defines(bpf_build / "dsa" / f"dsa-{tag}.h")
                   + "int main(void)\n{\n"
                   + "".join(f'\tprintf("%d\\n", {n});\n' for n in names) + "\treturn 0;\n}\n")
    import subprocess
    exe = tmp_path / "probe"
    subprocess.run(["cc", "-o", str(exe), str(src)], check=True)
    got = [int(x) for x in subprocess.run([str(exe)], check=True, capture_output=True,
                                          text=True).stdout.split()]
    assert got == [t.rx_len, t.tx_len, t.ports, t.pad_to, t.ethertype or 0]
    text = (bpf_build / "dsa" / f"dsa-{tag}.h").read_text()
    pos = {dsa.AFTER_SA: "DSA_TAG_AFTER_SA", dsa.HEAD: "DSA_TAG_HEAD", dsa.TAIL: "DSA_TAG_TAIL"}
    assert f"#define {pos[t.position]}" in text and f'"{t.name}"' in text


def _header_defines(path: Path) -> str:
    """Only the #define lines of a rendered header (its functions need the BPF headers)."""
    return "".join(line + "\n" for line in path.read_text().splitlines()
                   if line.startswith("#define DSA_"))


HOST_ENDIAN = "le" if struct.pack("=H", 1)[0] else "be"


@every_tag
@pytest.mark.parametrize("endian", ["le", "be"])
def test_objects_of_both_byte_orders_are_built_for_them(bpf_build: Path, tag: str, endian: str):
    data = (bpf_build / f"ebpfw-{tag}-{endian}.o").read_bytes()
    assert data[:4] == b"\x7fELF" and data[5] == (1 if endian == "le" else 2)   # EI_DATA
    assert struct.unpack_from("<H" if endian == "le" else ">H", data, 18)[0] == 247   # EM_BPF


@pytest.mark.parametrize("hook", HOOKS, ids=lambda h: h.name)
def test_object_of_the_hosts_byte_order_forwards(bpf_build: Path, tag: str, hook: Hook):
    """The kernel loads objects of its own byte order only; the other's is checked for what
    it holds (test_object_names_its_tag)."""
    fp = _load(bpf_build / f"ebpfw-{tag}-{HOST_ENDIAN}.o", True)
    try:
        t = flow_tuple(6, "udp")
        post = nat_tuple(t, "both")
        install(fp, t, post, L2_IN["untagged"], L2_OUT["untagged"], in_port=0, out_port=1)
        res = fp.run(hook, rx_frame(tag, 0, L2_IN["untagged"], t))
        assert (res.retval, res.data) == (hook.forwarded,
                                          tx_frame(tag, 1, L2_OUT["untagged"], post))
    finally:
        fp.ring.close()
        fp.obj.close()


@every_tag
@pytest.mark.parametrize("endian", ["le", "be"])
def test_object_names_its_tag(bpf_build: Path, tag: str, endian: str, tmp_path: Path):
    import subprocess
    out = tmp_path / "dsa.bin"
    subprocess.run(["llvm-objcopy", "-O", "binary", "--only-section=.rodata.dsa",
                    str(bpf_build / f"ebpfw-{tag}-{endian}.o"), str(out)], check=True)
    assert out.read_bytes().rstrip(b"\0") == tag.encode()


@pytest.mark.tags(lambda t: t not in IN_FRONT)
@pytest.mark.parametrize("hook", HOOKS, ids=lambda h: h.name)
def test_tail_tag_frames_pass(objects: dict[str, FastPath], tag: str, hook: Hook):
    """Tail tags are not parsed yet: their frames stay with the stack, both ways."""
    conduit, other = objects["conduit"], objects["other"]
    conduit.reset()
    other.reset()
    t = flow_tuple(4, "udp")
    install(conduit, t, nat_tuple(t, "snat"), L2_IN["untagged"], L2_OUT["untagged"], in_port=1)
    assert_passed(conduit, hook, rx_frame(tag, 1, L2_IN["untagged"], t),
                  maps.Counter.PASS_DSA_TAG)
    install(other, t, nat_tuple(t, "snat"), L2_IN["untagged"], L2_OUT["untagged"], out_port=1)
    assert_passed(other, hook, frame(L2_IN["untagged"], t), maps.Counter.PASS_L2_REWRITE)
