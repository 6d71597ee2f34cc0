# SPDX-License-Identifier: GPL-2.0-only
"""The Python mirror of the ABI matches the compiled objects' BTF and the header."""
from __future__ import annotations

import ctypes
import json
import subprocess
from pathlib import Path

import pytest

from fw_ebpf import maps

ROOT = Path(__file__).resolve().parents[1]
HEADER = ROOT / "bpf" / "include" / "ebpfw" / "abi.h"


def btf_types(obj: Path) -> dict[int, dict]:
    out = subprocess.run(["bpftool", "-j", "btf", "dump", "file", str(obj)],
                         check=True, capture_output=True, text=True).stdout
    return {t["id"]: t for t in json.loads(out)["types"]}


def type_size(types: dict[int, dict], type_id: int) -> int:
    t = types[type_id]
    while t["kind"] in ("TYPEDEF", "CONST", "VOLATILE", "RESTRICT"):
        t = types[t["type_id"]]
    if t["kind"] == "ARRAY":
        return t["nr_elems"] * type_size(types, t["type_id"])
    return t["size"]


@pytest.mark.parametrize("endian", ["le", "be"])
@pytest.mark.parametrize("mirror", maps.ABI_STRUCTS, ids=lambda s: s._c_name_)
def test_struct_mirror_matches_btf(bpf_build: Path, endian: str,
                                   mirror: type[ctypes.Structure | ctypes.Union]):
    types = btf_types(bpf_build / f"ebpfw-{endian}.o")
    kind = "UNION" if issubclass(mirror, ctypes.Union) else "STRUCT"
    found = [t for t in types.values() if t["kind"] == kind and t["name"] == mirror._c_name_]
    assert found, f"{kind.lower()} {mirror._c_name_} is not in the BTF of ebpfw-{endian}.o"
    btf = found[0]
    assert btf["size"] == ctypes.sizeof(mirror)
    assert [m["name"] for m in btf["members"]] == [f[0] for f in mirror._fields_]
    for member in btf["members"]:
        field = getattr(mirror, member["name"])
        assert member["bits_offset"] == field.offset * 8, member["name"]
        assert type_size(types, member["type_id"]) == field.size, member["name"]


def header_constants(names: list[str], tmp_path: Path) -> dict[str, int]:
    """Values of the header's macros and enumerators, as a C compiler sees them."""
    prints = "".join(f'\tprintf("{n} %lld\\n", (long long)({n}));\n' for n in names)
    src = tmp_path / "probe.c"
    src.write_text(f'#include <stdio.h>\n#include "{HEADER}"\nint main(void)\n{{\n{prints}\treturn 0;\n}}\n')
    exe = tmp_path / "probe"
    subprocess.run(["cc", "-o", str(exe), str(src)], check=True)
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout
    return {name: int(value) for name, value in (line.split() for line in out.splitlines())}


def test_constants_match_header(tmp_path: Path):
    expected: dict[str, int] = {
        "EBPFW_FLOWS_DEFAULT": maps.FLOWS_DEFAULT, "EBPFW_PENDING_DEFAULT": maps.PENDING_DEFAULT,
        "EBPFW_EVENTS_BYTES": maps.EVENTS_BYTES,
        "EBPFW_TX_MAX": maps.TX_MAX, "EBPFW_MACS_MAX": maps.MACS_MAX, "EBPFW_L3_IPV4": maps.L3_IPV4, "EBPFW_L3_IPV6": maps.L3_IPV6,
        "EBPFW_NO_DSA_PORT": maps.NO_DSA_PORT, "EBPFW_DSA_CONDUITS": maps.DSA_CONDUITS,
        "EBPFW_F_NAT": maps.F_NAT,
        "EBPFW_F_CLOSING": maps.F_CLOSING, "EBPFW_F_TC_ONLY": maps.F_TC_ONLY,
        "EBPFW_F_REPORTED": maps.F_REPORTED, "EBPFW_EGRESS_DEFAULT": maps.EGRESS_DEFAULT,
    }
    expected |= {f"EBPFW_{s.name}": s.value for s in maps.State}
    expected |= {f"EBPFW_EV_{e.name}": e.value for e in maps.EventType}
    expected |= {c.c_name: c.value for c in maps.Counter}
    assert header_constants(list(expected), tmp_path) == expected


def test_every_header_enumerator_is_mirrored():
    """A counter added to the header without its mirror fails here, not in the field."""
    text = HEADER.read_text()
    body = text[text.index("enum ebpfw_counter {"):]
    body = body[:body.index("};")]
    c_names = [line.split(",")[0].split("=")[0].strip() for line in body.splitlines()[1:]
               if line.strip().startswith("EBPFW_")]
    assert c_names == [c.c_name for c in maps.Counter]


def test_flow_head_unpacks_the_flow_mirror():
    flow = maps.Flow(packets=1, bytes=2, last_seen_ns=3, expires_ns=4, state=5, flags=6)
    assert maps.FLOW_HEAD.unpack_from(bytes(flow)) == (1, 2, 3, 4, 5, 6)


def test_flow_tables_use_the_mirrored_keys_and_value(bpf_object: Path):
    from fw_ebpf.libbpf import BpfObject
    with BpfObject(str(bpf_object)) as obj:
        for family, names in maps.TABLES.items():
            for name in names:
                m = obj.map(name)
                assert m.key_size == (maps.KEY4_LEN if family == maps.L3_IPV4 else maps.KEY6_LEN)
                assert m.value_size == ctypes.sizeof(maps.Flow)
        assert (obj.map(maps.TABLES[maps.L3_IPV4][1]).max_entries ==
                obj.map(maps.TABLES[maps.L3_IPV6][1]).max_entries == maps.PENDING_DEFAULT)


def test_object_config_defaults_are_the_python_defaults(bpf_object: Path, tmp_path: Path):
    """The loader always writes .rodata.config; the object's own defaults must agree with it."""
    out = tmp_path / "config.bin"
    subprocess.run(["llvm-objcopy", "-O", "binary", f"--only-section={maps.CONFIG_SECTION}",
                    str(bpf_object), str(out)], check=True)
    assert out.read_bytes() == maps.encode_config(5.0)


def test_proof_fields_are_read_and_written_where_the_mirror_has_them():
    f = maps.Flow(packets=7, bytes=900, last_seen_ns=5, expires_ns=6, state=maps.State.PROVING,
                  flags=maps.F_REPORTED | maps.F_NAT, mtu=1, oif=42, gen=3, proof_gen=8)
    f.l2.vlans, f.l2.vlan_tci[0], f.l2.vlan_tci[1] = 2, 0x2064, 0x000A
    f.l2.pppoe_sid, f.l2.dsa_port, f.nat_sport = 0x1234, 5, 999
    raw = bytes(f)
    assert maps.decode_proof(raw) == maps.Proof(maps.State.PROVING, f.flags, 42,
                                                (0x2064, 0x000A), 0x1234, 5, 8)
    f.l2.vlans = 1
    assert maps.decode_proof(bytes(f)).vlan_tci == (0x2064,)
    f.l2.vlans = 2
    out = maps.decode_flow(maps.encode_forwarding(raw, maps.F_NAT, 1492, 9, last_seen_ns=11))
    f.state, f.flags, f.mtu, f.gen, f.last_seen_ns = maps.State.FORWARD, maps.F_NAT, 1492, 9, 11
    assert bytes(out) == bytes(f)
    kept = maps.decode_flow(maps.encode_forwarding(raw, 0, 1500, 9))
    assert (kept.last_seen_ns, kept.packets, kept.bytes, kept.oif) == (5, 7, 900, 42)
