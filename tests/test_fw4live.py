# SPDX-License-Identifier: GPL-2.0-only
"""fw4live.Fw4Keeper: which fw4 model early drop trusts over time (issue 9, part 1).

The router is a stand-in here (what it answers is set by each test); the real kernel side
(fw4's table, marks, sets, generation) is tested in test_fw4kernel.py.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from fw_ebpf.fw4 import Model, ModelError, load_model, parse_model
from fw_ebpf.fw4live import BACKOFF, Fw4Keeper, Reading, Router
from fw_ebpf.policy import Facts, Policy

CASES_DIR = Path(__file__).resolve().parents[2] / "shared" / "fw4-cases"
needs_cases = pytest.mark.skipif(not CASES_DIR.is_dir(), reason=f"{CASES_DIR} is absent")


def tiny_model() -> Model:
    return parse_model({"defaults": {"input": "drop", "output": "accept", "forward": "drop"},
                        "zones": [{"name": "wan", "input": "drop", "output": "accept",
                                   "forward": "drop",
                                   "match_rules": [{"devices_pos": ["eth1"]}]}],
                        "rules": {}, "redirects": {}, "ipsets": None})


class FakeRouter(Router):
    def __init__(self) -> None:
        self.problem: str | None = None
        self.fp: str | None = "table-1"
        self.gen = 1
        self.setter: str | None = None
        self.reads = 0

    def check(self, model: Model) -> str | None:
        return self.problem

    def read(self, model: Model) -> Reading:
        self.reads += 1
        return Reading(Facts(mark_setter=self.setter), self.fp, self.gen)

    def generation(self) -> int | None:
        return self.gen

    def fingerprint(self) -> str | None:
        return self.fp


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def keeper(load: Any, router: FakeRouter, clock: Clock) -> Fw4Keeper:
    return Fw4Keeper(load, lambda m, f: Policy(m, lambda a: False, lambda a: None, f),
                     router, clock)


def refused(why: str = "zone 'lan': networks 'lan' resolve to no device") -> Any:
    def load() -> Model:
        raise ModelError(f"hook: {why}")
    return load


def test_refused_model_turns_early_drop_off_with_one_log_line_and_backs_off(caplog):
    router, clock = FakeRouter(), Clock()
    k = keeper(refused(), router, clock)
    with caplog.at_level(logging.DEBUG, logger="fw_ebpf.fw4live"):
        assert k.refresh() is None
        delays = []
        for _ in range(len(BACKOFF) + 2):
            delays.append(k.retry_at - clock.t)
            clock.t = k.retry_at
            assert k.tick() is False
    assert delays == list(BACKOFF) + [BACKOFF[-1]] * 2
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert warnings[0].getMessage() == ("fw4 model refused: hook: zone 'lan': networks 'lan' "
                                        "resolve to no device; early drop off; retrying in 1 s")
    st = k.status()
    assert st["state"] == "off" and st["refusals"] == len(BACKOFF) + 3 and "zone 'lan'" in \
        st["error"]


def test_a_good_model_after_refusals_turns_early_drop_on():
    router, clock = FakeRouter(), Clock()
    attempts: list[int] = []

    def load() -> Model:
        attempts.append(1)
        if len(attempts) < 3:
            raise ModelError("hook: fw4 said: Unable to connect to ubus")
        return tiny_model()
    k = keeper(load, router, clock)
    assert k.refresh() is None
    clock.t = k.retry_at
    assert k.tick() is False
    # netifd came up: a poke brings the retry forward instead of waiting for the back-off
    k.poke()
    assert k.retry_at == clock.t + 0.5
    clock.t = k.retry_at
    assert k.tick() is True and k.policy is not None
    st = k.status()
    assert st["state"] == "ok" and st["model_age_s"] == 0.0 and "error" not in st
    clock.t += 42
    assert k.status()["model_age_s"] == 42.0


def test_router_check_refuses_a_model_the_kernel_does_not_run():
    router, clock = FakeRouter(), Clock()
    router.problem = "zone 'lan': the kernel's fw4 table matches br-lan in 1 rules, the model " \
                     "no device in 0"
    k = keeper(tiny_model, router, clock)
    assert k.refresh() is None and "the kernel's fw4 table" in k.status()["error"]


def test_last_good_model_is_kept_only_while_the_kernels_table_is_unchanged():
    router, clock = FakeRouter(), Clock()
    broken = [False]

    def load() -> Model:
        if broken[0]:
            raise ModelError("hook: fw4 said: Unable to connect to ubus")
        return tiny_model()
    k = keeper(load, router, clock)
    good = k.refresh()
    assert good is not None
    broken[0] = True
    clock.t += 10
    kept = k.refresh()          # a resync while ubus restarts, fw4's table as it was
    assert kept is not None
    st = k.status()
    assert st["state"] == "refused, last good model kept" and st["model_age_s"] == 10.0
    router.fp = "table-2"       # fw4 reloaded meanwhile: the old model may lie now
    clock.t = k.retry_at
    assert k.tick() is True and k.policy is None and k.status()["state"] == "off"


def test_facts_are_read_again_when_nftables_moves():
    router, clock = FakeRouter(), Clock()
    k = keeper(tiny_model, router, clock)
    first = k.refresh()
    assert first is not None and first.facts.mark_setter is None
    assert k.tick() is False and router.reads == 1      # same generation: nothing read
    router.gen, router.setter = 2, "nft table inet x chain pre sets a mark"
    assert k.tick() is True
    assert k.policy is not None and k.policy.facts.mark_setter == router.setter
    router.gen, router.fp = 3, "table-2"                # fw4's own table changed: reload
    loads_before = router.reads
    assert k.tick() is True and router.reads == loads_before + 2


@needs_cases
def test_the_model_printed_without_ubus_never_becomes_a_policy():
    router, clock = FakeRouter(), Clock()
    k = keeper(lambda: load_model(CASES_DIR / "default" / "model-ubus-unreachable.json"),
               router, clock)
    assert k.refresh() is None
    assert "zone 'lan'" in k.status()["error"]
