# SPDX-License-Identifier: GPL-2.0-only
"""policy.py on fw4's real models (../shared/fw4-cases) and on synthesized uncertain ones."""
from __future__ import annotations

import copy
import ipaddress
import json
from pathlib import Path
from typing import Any

import pytest

from fw_ebpf.fw4 import ModelError, load_model, parse_model
from fw_ebpf.policy import Policy, Query, Verdict

CASES_DIR = Path(__file__).resolve().parents[2] / "shared" / "fw4-cases"
needs_cases = pytest.mark.skipif(not CASES_DIR.is_dir(), reason=f"{CASES_DIR} is absent")

LOCAL = {ipaddress.ip_address(a) for a in ("192.168.1.1", "fd12:3456:789a::1", "203.0.113.2",
                                           "2001:db8:ffff::2", "192.168.3.1")}
ROUTES = [(ipaddress.ip_network(n), d) for n, d in (
    ("192.168.1.0/24", "br-lan"), ("192.168.3.0/24", "br-guest"), ("203.0.113.0/24", "eth1"),
    ("fd12:3456:789a::/64", "br-lan"), ("0.0.0.0/0", "eth1"), ("::/0", "eth1"))]
TCP, UDP, ICMP = 6, 17, 1


def out_device(addr: Any) -> str | None:
    return next((d for n, d in ROUTES if n.version == addr.version and addr in n), None)


def policy(case: str) -> Policy:
    return Policy(load_model(CASES_DIR / case / "model.json"), lambda a: a in LOCAL, out_device)


def q(proto: int, src: str, dst: str, dport: int, dev: str, icmp_type: int | None = None) -> Query:
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    return Query(s.version, proto, s, d, 40000, dport, dev, icmp_type)


def raw(case: str) -> dict[str, Any]:
    return json.loads((CASES_DIR / case / "model.json").read_text())


# -- real models ------------------------------------------------------------------------------

@needs_cases
def test_port_forward_8080_is_accepted_by_ct_status_dnat() -> None:
    d = policy("portfwd_rules").decide(q(TCP, "203.0.113.1", "203.0.113.2", 8080, "eth1"))
    assert d.verdict is Verdict.ACCEPT
    assert "DNAT-Web-8080" in d.reason


@needs_cases
def test_port_forward_reflection_from_lan_is_accepted() -> None:
    d = policy("portfwd_rules").decide(q(TCP, "192.168.1.66", "203.0.113.2", 8080, "br-lan"))
    assert d.verdict is Verdict.ACCEPT and "reflection" in d.reason


@needs_cases
def test_udp_port_forward_2222_but_not_ipv6() -> None:
    p = policy("portfwd_rules")
    assert p.decide(q(UDP, "203.0.113.1", "203.0.113.2", 2222, "eth1")).verdict is Verdict.ACCEPT
    # no IPv6 redirect: the router itself rejects it as wan input
    d = p.decide(q(UDP, "2001:db8:ffff::1", "2001:db8:ffff::2", 2222, "eth1"))
    assert d == d.__class__(Verdict.REJECT, "zone wan input policy")


@needs_cases
def test_drop_rule_for_wan_udp_range_to_lan() -> None:
    p = policy("portfwd_rules")
    for port in (6000, 6005, 6010):
        d = p.decide(q(UDP, "203.0.113.1", "192.168.1.10", port, "eth1"))
        assert d.verdict is Verdict.DROP
        assert d.reason == "rule 'Drop-WAN-UDP-6000-6010-to-LAN' (forward_wan)"
    # just outside the range: wan forward DROP only covers wan->wan, defaults reject the rest
    d = p.decide(q(UDP, "203.0.113.1", "192.168.1.10", 6011, "eth1"))
    assert d == d.__class__(Verdict.REJECT, "defaults forward policy")
    # TCP is not named by the rule
    assert p.decide(q(TCP, "203.0.113.1", "192.168.1.10", 6005, "eth1")).verdict is Verdict.REJECT


@needs_cases
def test_reject_rules_with_src_ip_and_port_list() -> None:
    p = policy("portfwd_rules")
    d = p.decide(q(TCP, "192.168.1.66", "198.51.100.20", 23, "br-lan"))
    assert d.verdict is Verdict.REJECT and "Reject-LAN-Host-Telnet" in d.reason
    assert p.decide(q(TCP, "192.168.1.10", "198.51.100.20", 23, "br-lan")).verdict \
        is Verdict.ACCEPT
    for port in (25, 465, 587):
        d = p.decide(q(TCP, "192.168.1.10", "198.51.100.20", port, "br-lan"))
        assert d.verdict is Verdict.REJECT and "Reject-LAN-SMTP-out" in d.reason
    assert p.decide(q(TCP, "192.168.1.10", "198.51.100.20", 466, "br-lan")).verdict \
        is Verdict.ACCEPT


@needs_cases
def test_icmp_timestamp_drop_and_family_restricted_ssh() -> None:
    p = policy("portfwd_rules")
    d = p.decide(q(ICMP, "203.0.113.1", "203.0.113.2", 0, "eth1", icmp_type=13))
    assert d.verdict is Verdict.DROP and "Drop-ICMP-Timestamp" in d.reason
    assert p.decide(q(ICMP, "203.0.113.1", "203.0.113.2", 0, "eth1", icmp_type=8)).verdict \
        is Verdict.ACCEPT
    assert p.decide(q(TCP, "203.0.113.1", "203.0.113.2", 22, "eth1")).verdict is Verdict.ACCEPT
    assert p.decide(q(TCP, "2001:db8:ffff::1", "2001:db8:ffff::2", 22, "eth1")).verdict \
        is Verdict.REJECT


@needs_cases
def test_rate_limited_icmpv6_rule_is_unknown_not_accept() -> None:
    d = policy("default").decide(q(58, "2001:db8:ffff::1", "2001:db8:ffff::2", 0, "eth1",
                                   icmp_type=128))
    assert d.verdict is Verdict.UNKNOWN and "rate limit" in d.reason


@needs_cases
def test_guest_zone() -> None:
    p = policy("three_zones_guest")
    d = p.decide(q(TCP, "192.168.3.10", "192.168.1.10", 80, "br-guest"))
    assert d.verdict is Verdict.REJECT and "Guest-Block-LAN" in d.reason
    d = p.decide(q(TCP, "192.168.3.10", "198.51.100.20", 443, "br-guest"))
    assert d.verdict is Verdict.ACCEPT and "guest to wan" in d.reason
    assert p.decide(q(UDP, "192.168.3.10", "192.168.3.1", 53, "br-guest")).verdict \
        is Verdict.ACCEPT
    assert p.decide(q(UDP, "192.168.3.10", "192.168.3.1", 67, "br-guest")).verdict \
        is Verdict.ACCEPT
    d = p.decide(q(TCP, "192.168.3.10", "192.168.3.1", 22, "br-guest"))
    assert d == d.__class__(Verdict.REJECT, "zone guest input policy")
    # wan input DROP is a real drop; wan->guest forward falls through to the defaults' reject
    d = p.decide(q(TCP, "203.0.113.1", "203.0.113.2", 22, "eth1"))
    assert d == d.__class__(Verdict.DROP, "zone wan input policy")
    assert p.decide(q(TCP, "203.0.113.1", "192.168.3.10", 80, "eth1")).verdict \
        is Verdict.REJECT
    # lan is not forwarded to guest: lan forward ACCEPT only covers lan->lan
    assert p.decide(q(TCP, "192.168.1.10", "192.168.3.10", 80, "br-lan")).verdict \
        is Verdict.REJECT


@needs_cases
def test_flow_offloading_model_parses() -> None:
    m = load_model(CASES_DIR / "flow_offloading" / "model.json")
    assert m.defaults.flow_offloading and m.defaults.synflood_protect
    assert [z.name for z in m.zones] == ["lan", "wan"]
    assert "forward_wan" in m.rules
    p = Policy(m, lambda a: a in LOCAL, out_device)
    assert p.decide(q(TCP, "192.168.1.10", "198.51.100.20", 443, "br-lan")).verdict \
        is Verdict.ACCEPT


@needs_cases
def test_unknown_input_device_and_missing_route() -> None:
    p = policy("default")
    d = p.decide(q(TCP, "10.0.0.1", "203.0.113.2", 22, "eth9"))
    assert d == d.__class__(Verdict.REJECT, "defaults input policy")
    no_route = Policy(load_model(CASES_DIR / "default" / "model.json"), lambda a: False,
                      lambda a: None)
    assert no_route.decide(q(TCP, "192.168.1.10", "198.51.100.20", 80, "br-lan")).verdict \
        is Verdict.UNKNOWN


# -- synthesized uncertainty ------------------------------------------------------------------

def _with_rule_before_drop(case: str, extra: dict[str, Any]) -> Policy:
    """portfwd_rules with an ACCEPT rule carrying `extra` right before the 6000-6010 DROP."""
    obj = raw(case)
    chain = obj["rules"]["forward_wan"]
    drop = next(i for i, r in enumerate(chain) if r["name"].startswith("Drop-WAN-UDP"))
    rule = copy.deepcopy(chain[drop])
    rule.update(name="Allow-Friends", target="accept", jump_chain="accept_to_lan", **extra)
    chain.insert(drop, rule)
    return Policy(parse_model(obj, "synth"), lambda a: a in LOCAL, out_device)


@needs_cases
@pytest.mark.parametrize("extra, what", [
    ({"ipset": {"name": "friends", "invert": False, "fields": ["ip saddr"]}}, "ipset"),
    ({"limit": {"rate": 10, "unit": "second"}}, "rate limit"),
    ({"log": "x: ", "log_limit": {"rate": 10, "unit": "second"}}, "log rate limit"),
    ({"start_time": {"hour": 8, "min": 0, "sec": 0},
      "stop_time": {"hour": 18, "min": 0, "sec": 0}}, "time window"),
    ({"weekdays": {"days": ["Monday"], "invert": False}}, "time window"),
    ({"mark": {"mark": 1, "mask": 0xffffffff, "invert": False}}, "mark"),
    ({"smacs_pos": ["00:11:22:33:44:55"]}, "MAC"),
    ({"helper": {"name": "ftp", "invert": False}}, "helper"),
    ({"extra": "--foo"}, "extra"),
    ({"iifnames": ["eth1"]}, "device"),
    ({"some_future_option": 1}, "some_future_option"),
])
def test_unmodelled_rule_before_a_drop_makes_it_unknown(extra: dict[str, Any], what: str) -> None:
    p = _with_rule_before_drop("portfwd_rules", extra)
    d = p.decide(q(UDP, "203.0.113.1", "192.168.1.10", 6005, "eth1"))
    assert d.verdict is Verdict.UNKNOWN
    assert what in d.reason and "Drop-WAN-UDP-6000-6010-to-LAN" in d.reason
    # a flow the uncertain rule cannot match keeps its certain verdict
    assert p.decide(q(TCP, "203.0.113.1", "192.168.1.10", 6005, "eth1")).verdict \
        is Verdict.REJECT


@needs_cases
def test_unmodelled_rule_after_the_deciding_one_does_not_matter() -> None:
    obj = raw("portfwd_rules")
    chain = obj["rules"]["forward_wan"]
    rule = copy.deepcopy(next(r for r in chain if r["name"].startswith("Drop-WAN-UDP")))
    rule.update(name="Late", target="accept", jump_chain="accept_to_lan",
                ipset={"name": "x", "invert": False, "fields": ["ip saddr"]})
    chain.append(rule)
    p = Policy(parse_model(obj, "synth"), lambda a: a in LOCAL, out_device)
    assert p.decide(q(UDP, "203.0.113.1", "192.168.1.10", 6005, "eth1")).verdict is Verdict.DROP


@needs_cases
def test_uncertain_redirect_makes_the_forward_unknown() -> None:
    obj = raw("portfwd_rules")
    obj["redirects"]["dstnat_wan"][0]["start_time"] = {"hour": 8, "min": 0, "sec": 0}
    p = Policy(parse_model(obj, "synth"), lambda a: a in LOCAL, out_device)
    d = p.decide(q(TCP, "203.0.113.1", "203.0.113.2", 8080, "eth1"))
    assert d.verdict is Verdict.UNKNOWN and "DNAT-Web-8080" in d.reason


@needs_cases
def test_notrack_zone_makes_everything_unknown() -> None:
    obj = raw("default")
    obj["zones"][1]["dflags"]["notrack"] = True
    p = Policy(parse_model(obj, "synth"), lambda a: a in LOCAL, out_device)
    assert p.decide(q(TCP, "203.0.113.1", "203.0.113.2", 22, "eth1")).verdict is Verdict.UNKNOWN


def test_drop_policy_zone_synthesized_without_cases() -> None:
    zone = {"name": "wan", "input": "drop", "output": "accept", "forward": "drop",
            "match_rules": [{"family": 0, "devices_pos": ["eth1"]}], "dflags": {"drop": True},
            "sflags": {"drop": True}}
    obj = {"defaults": {"input": "drop", "output": "accept", "forward": "drop"},
           "zones": [zone], "rules": {}, "redirects": {}, "ipsets": None}
    p = Policy(parse_model(obj), lambda a: a in LOCAL, out_device)
    d = p.decide(q(TCP, "203.0.113.1", "203.0.113.2", 22, "eth1"))
    assert d.verdict is Verdict.DROP and d.reason == "zone wan input policy"
    # lo is always accepted, unknown devices fall to the chain policy
    assert p.decide(q(TCP, "127.0.0.1", "203.0.113.2", 22, "lo")).verdict is Verdict.ACCEPT
    d = p.decide(q(TCP, "10.0.0.1", "203.0.113.2", 22, "eth7"))
    assert d == d.__class__(Verdict.DROP, "defaults input policy")


# -- malformed models -------------------------------------------------------------------------

def test_malformed_json_names_the_file(tmp_path: Path) -> None:
    f = tmp_path / "model.json"
    f.write_text("{not json")
    with pytest.raises(ModelError, match=r"model\.json: not JSON"):
        load_model(f)


@needs_cases
@pytest.mark.parametrize("mutate, key", [
    (lambda o: o.pop("zones"), r"zones: missing"),
    (lambda o: o["defaults"].update(input="maybe"), r"defaults\.input: policy"),
    (lambda o: o["rules"]["forward_wan"][4].update(dports_pos=["60x"]),
     r"rules\.forward_wan\[4\]\.dports_pos\[0\]"),
    (lambda o: o["zones"][0].update(match_rules="br-lan"), r"zones\[0\]\.match_rules"),
    (lambda o: o["redirects"]["dstnat_wan"][0]["raddr"].update(addr="nope"),
     r"redirects\.dstnat_wan\[0\]\.raddr\.addr"),
])
def test_malformed_model_error_names_the_key(tmp_path: Path, mutate: Any, key: str) -> None:
    obj = raw("portfwd_rules")
    mutate(obj)
    f = tmp_path / "bad.json"
    f.write_text(json.dumps(obj))
    with pytest.raises(ModelError, match=key) as info:
        load_model(f)
    assert str(info.value).startswith(f"{f}: ") and "\n" not in str(info.value)


def test_user_nft_includes_turn_early_drop_off(tmp_path):
    from fw_ebpf.daemon import user_includes

    (tmp_path / "10-comments.nft").write_text("# chain user_pre_input {\n#}\n\n")
    (tmp_path / "README").write_text("chain x { accept }\n")
    assert user_includes(str(tmp_path)) == []
    (tmp_path / "20-accept.nft").write_text("chain user_pre_input { tcp dport 22 accept }\n")
    assert user_includes(str(tmp_path)) == [str(tmp_path / "20-accept.nft")]
    assert user_includes(str(tmp_path / "missing")) == []
