# SPDX-License-Identifier: GPL-2.0-only
"""DSA discovery on a sysfs tree laid out as OpenWrt shows an MT7621 router (tests/data:
written from the attributes such a router has, not copied off one), where `auto` attaches,
and one set of pinned maps for every object."""
from __future__ import annotations

from pathlib import Path

import pytest

from fw_ebpf import conduit, dsa, maps
from fw_ebpf.conduit import Conduit, UserPort
from fw_ebpf.loader import BYTE_ORDER, PINNED_MAPS, Loader
from conftest import requires_root

MT7621 = str(Path(__file__).resolve().parent / "data" / "sysfs-mt7621")
AUTO = ["eth0", "wan", "lan1", "lan2", "lan3", "lan4", "phy0-ap0"]   # what lowest_devices gives
ALL_OBJECTS = lambda tag: True   # noqa: E731


def test_discovery_reads_tag_ports_and_conduit_from_sysfs():
    found = conduit.discover(MT7621)
    assert list(found) == ["eth0"]
    eth0 = found["eth0"]
    assert (eth0.ifindex, eth0.tag) == (2, "mtk")
    assert [(p.name, p.port, p.ifindex, p.conduit) for p in eth0.ports] == [
        ("wan", 0, 3, "eth0"), ("lan1", 1, 4, "eth0"), ("lan2", 2, 5, "eth0"),
        ("lan3", 3, 6, "eth0"), ("lan4", 4, 7, "eth0")]   # eth0.100: iflink 2, no pN


def test_discovery_of_a_machine_without_switches(tmp_path: Path):
    (tmp_path / "class" / "net" / "eth0").mkdir(parents=True)
    (tmp_path / "class" / "net" / "eth0" / "ifindex").write_text("2\n")
    assert conduit.discover(str(tmp_path)) == {}
    assert conduit.discover(str(tmp_path / "missing")) == {}


def test_auto_takes_the_conduit_in_place_of_its_user_ports():
    p = conduit.plan(AUTO, conduit.discover(MT7621), ALL_OBJECTS)
    assert (p.tag, [c.name for c in p.conduits], p.interfaces) == ("mtk", ["eth0"],
                                                                   ["eth0", "phy0-ap0"])
    assert p.conduit_ifindexes == (2,) and p.notes == {}


def test_conduit_listed_after_its_ports_or_not_at_all_is_still_attached():
    p = conduit.plan(["lan1", "wan", "phy0-ap0"], conduit.discover(MT7621), ALL_OBJECTS)
    assert p.interfaces == ["phy0-ap0", "eth0"]


@pytest.mark.parametrize("case,why", [
    ("no object", "no object for the mtk tag"),
    ("untagged", "frames arrive without the mtk tag"),
    ("zone split", "zone lan also has user ports of lan9"),
])
def test_user_ports_when_the_conduit_cannot_be_used(case: str, why: str):
    switches = dict(conduit.discover(MT7621))
    switches["eth1"] = Conduit("eth1", 20, "mtk", (UserPort("lan9", 21, 1, "eth1"),))
    has = (lambda tag: False) if case == "no object" else ALL_OBJECTS
    zones = {"lan": {"lan1", "lan2", "lan9"}, "wan": {"wan"}} if case == "zone split" else None
    untagged = ["eth0"] if case == "untagged" else []
    p = conduit.plan(AUTO + ["lan9"], switches, has, zones, untagged)
    assert "eth0" not in p.interfaces
    assert {"wan", "lan1", "lan2", "lan3", "lan4", "phy0-ap0"} <= set(p.interfaces)
    assert p.notes["eth0"].startswith(why)
    assert p.notes["eth0"].endswith("attached to wan, lan1, lan2, lan3, lan4")


def test_one_tag_per_object_and_tail_tags_on_their_ports():
    switches = {
        "eth0": Conduit("eth0", 2, "mtk", (UserPort("lan1", 4, 1, "eth0"),)),
        "eth1": Conduit("eth1", 3, "qca", (UserPort("lan5", 5, 1, "eth1"),)),
        "eth2": Conduit("eth2", 6, "trailer", (UserPort("lan6", 7, 1, "eth2"),)),
    }
    p = conduit.plan(["lan1", "lan5", "lan6"], switches, ALL_OBJECTS)
    assert (p.tag, p.interfaces) == ("mtk", ["lan5", "lan6", "eth0"])
    assert p.notes["eth1"].startswith("its tag qca is not mtk")
    assert p.notes["eth2"].startswith("trailer is a tail tag")


def test_every_tail_tag_of_the_table_is_known_at_run_time():
    assert {t.name for t in dsa.TAGS.values() if t.position == dsa.TAIL} <= conduit.TAIL_TAGS


def test_zone_devices_are_bridge_ports():
    links = [("br-lan", 8, 0), ("lan1", 4, 8), ("lan2", 5, 8), ("wan", 3, 0), ("phy0-ap0", 10, 8)]
    assert conduit.zone_devices({"lan": ["br-lan"], "wan": ["wan", "pppoe-wan"]}, links) == {
        "lan": {"lan1", "lan2", "phy0-ap0"}, "wan": {"wan", "pppoe-wan"}}


@requires_root
def test_objects_of_every_tag_share_the_pinned_maps(bpf_build: Path, pin_dir: str):
    """The daemon loads the object of its conduits' tag; a restart with another (or none)
    re-adopts the same maps, pins included."""
    value = maps.encode_verdict(maps.State.PASS)
    for i, tag in enumerate((None, "mtk", "gswip", None)):
        loader = Loader(obj_dir=str(bpf_build), pin_dir=pin_dir, dsa_tag=tag,
                        config=maps.encode_config(5, dsa_conduits=(1,) if tag else ()))
        with loader:
            loader.load()
            assert loader.obj_path.endswith(f"ebpfw-{tag}-le.o" if tag else "ebpfw-le.o")
            flows = loader.map("ebpfw_flows4")
            assert [flows.lookup(_key(j)) for j in range(i)] == [value] * i, tag
            flows.update(_key(i), value)
            assert {m: loader.map(m).key_size for m in PINNED_MAPS}   # all of them pinned


def _key(n: int) -> bytes:
    import ipaddress
    return maps.encode_key(1, maps.Tuple(6, ipaddress.ip_address("10.0.0.1"),
                                         ipaddress.ip_address("10.0.0.2"), 1000 + n, 2))


@requires_root
def test_two_objects_loaded_at_once_use_one_flow_table(bpf_build: Path, pin_dir: str):
    a = Loader(obj_dir=str(bpf_build), pin_dir=pin_dir, dsa_tag="mtk")
    b = Loader(obj_dir=str(bpf_build), pin_dir=pin_dir, dsa_tag="qca")
    with a, b:
        a.load()
        b.load()
        key = _key(0)
        a.map("ebpfw_flows4").update(key, maps.encode_verdict(maps.State.PASS))
        assert b.map("ebpfw_flows4").lookup(key) == maps.encode_verdict(maps.State.PASS)


def test_objects_exist_for_every_tag(bpf_build: Path):
    has = conduit.object_exists(str(bpf_build), BYTE_ORDER)
    assert all(has(tag) for tag in dsa.TAGS) and not has("no-such-tag")
