# SPDX-License-Identifier: GPL-2.0-only
"""fw4's model over time: which one early drop may trust, and when to look again.

A model is used only when it describes the router the kernel filters for: fw4.parse_model
refuses what fw4 prints without ubus or netifd, and here the router is asked too (every zone's
devices exist; the zones jump on the same devices in the kernel's fw4 table). A refused model
is logged in one line and retried on its own with back-off (and sooner when `poke()` says
netifd or a link changed). Until a good one arrives the last good model stays in use only while
the kernel's fw4 table is the one it was read against; otherwise early drop is off.

The facts the policy needs beside the model (clock and UTC offset, mark setters, static set
contents) are read with it, and read again when nftables' generation moves.
"""
from __future__ import annotations

import logging
import math
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from . import fw4kernel
from .fw4 import Model, ModelError, missing_devices
from .fw4sets import static_sets
from .policy import Facts, Policy, TimeView

log = logging.getLogger("fw_ebpf.fw4live")

BACKOFF = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0)
POKE_DELAY = 0.5      # a netifd or link event: retry this soon (events come in bursts)


@dataclass(frozen=True)
class Reading:
    """What the router said when a model was checked against it."""
    facts: Facts
    fingerprint: str | None     # of the kernel's fw4 table; None when it cannot be read
    generation: int | None      # nftables' generation id at the time


class Router:
    """The checks and facts that need the live router (this network namespace)."""

    def check(self, model: Model) -> str | None:
        """Why the model does not describe this router, or None."""
        problem = missing_devices(model, _device_exists)
        if problem:
            return problem
        with fw4kernel.Nft() as nft:
            table = fw4kernel.fw4_table(nft)
        if table is None:
            return "the kernel has no fw4 table (table inet fw4): the firewall is not loaded"
        return zones_disagree(model, table)

    def read(self, model: Model) -> Reading:
        gen = _quiet(fw4kernel.nft_generation)
        gmtoff = time.localtime().tm_gmtoff
        with fw4kernel.Nft() as nft:
            table = fw4kernel.fw4_table(nft)
            try:
                setters = fw4kernel.mark_setters(nft)
                setter = setters[0] if setters else None
            except (OSError, ValueError) as e:
                setter = f"cannot read what sets marks: {e}"
            kernel_sets: dict[str, Any] = {
                s.name: fw4kernel.set_elements(nft, s.name, s.types) for s in model.ipsets}
        view = TimeView(now=time.time, nft_gmtoff=gmtoff,
                        kernel_west=_quiet(fw4kernel.kernel_minuteswest) or 0,
                        kernel_hours=table.hour_values if table else None)
        sets = static_sets(model.ipsets, lambda p: Path(p).read_text(), kernel_sets)
        return Reading(Facts(time=view, mark_setter=setter, sets=sets),
                       table.fingerprint if table else None, gen)

    def generation(self) -> int | None:
        return _quiet(fw4kernel.nft_generation)

    def fingerprint(self) -> str | None:
        """Of the kernel's fw4 table now; None when there is none or it cannot be read."""
        try:
            with fw4kernel.Nft() as nft:
                table = fw4kernel.fw4_table(nft)
        except OSError:
            return None
        return table.fingerprint if table else None


def _quiet(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except OSError:
        return None


def _device_exists(name: str) -> bool:
    try:
        socket.if_nametoindex(name)
        return True
    except OSError:
        return False


def zones_disagree(model: Model, table: fw4kernel.Fw4Table) -> str | None:
    """Whether fw4's table in the kernel sends packets to other zones than the model says."""
    for z in model.zones:
        devices = {d for m in z.match_rules for d in m.devices_pos}
        kernel = table.zone_devices.get(z.name, frozenset())
        jumps = table.zone_jumps.get(z.name, 0)
        if jumps != len(z.match_rules) or devices != kernel:
            said = ", ".join(sorted(kernel)) or "no device"
            return (f"zone '{z.name}': the kernel's fw4 table matches {said} in {jumps} rules, "
                    f"the model {', '.join(sorted(devices)) or 'no device'} in "
                    f"{len(z.match_rules)}: the model is not the ruleset the kernel runs")
    return None


class Fw4Keeper:
    """The policy early drop uses, or None; see the module doc."""

    def __init__(self, load: Callable[[], Model], make_policy: Callable[[Model, Facts], Policy],
                 router: Router | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._load = load
        self._make_policy = make_policy
        self._router = router if router is not None else Router()
        self._clock = clock
        self.policy: Policy | None = None
        self._good: tuple[Model, Reading, float] | None = None   # model, reading, taken at
        self.error: str | None = None
        self._logged_error: str | None = None
        self._failures = 0
        self.retry_at = math.inf
        self.refusals = 0

    # -- loading --------------------------------------------------------------------------------

    def refresh(self) -> Policy | None:
        """Reads fw4's model now (start, resync, retry)."""
        self.retry_at = math.inf
        try:
            model = self._load()
            problem = self._router.check(model)
            if problem:
                raise ModelError(problem)
            reading = self._router.read(model)
        except (ModelError, OSError, ValueError) as e:
            self._refused(str(e))
            return self.policy
        self._good = (model, reading, self._clock())
        self.policy = self._make_policy(model, reading.facts)
        if self.error is not None:
            log.info("fw4 model accepted after %d refusals: early drop on", self._failures)
        self.error, self._logged_error, self._failures = None, None, 0
        return self.policy

    def _refused(self, why: str) -> None:
        self.refusals += 1
        self._failures += 1
        self.error = why
        delay = BACKOFF[min(self._failures, len(BACKOFF)) - 1]
        self.retry_at = self._clock() + delay
        kept = self._keep_last_good()
        self.policy = self._make_policy(*kept) if kept else None
        outcome = (f"keeping the model read {self._clock() - self._good[2]:.0f} s ago "
                   "(the kernel's fw4 table has not changed since)"
                   if kept and self._good else "early drop off")
        if why != self._logged_error:
            log.warning("fw4 model refused: %s; %s; retrying in %.0f s", why, outcome, delay)
            self._logged_error = why
        else:
            log.debug("fw4 model still refused: %s; retrying in %.0f s", why, delay)

    def _keep_last_good(self) -> tuple[Model, Facts] | None:
        if self._good is None:
            return None
        model, reading, _ = self._good
        if reading.fingerprint is None or self._router.fingerprint() != reading.fingerprint:
            return None
        return model, reading.facts

    # -- events ---------------------------------------------------------------------------------

    def off(self) -> None:
        """Early drop turned off: no policy, nothing to retry."""
        self.policy, self._good, self.error, self._logged_error = None, None, None, None
        self._failures, self.retry_at = 0, math.inf

    def poke(self) -> None:
        """netifd, ubus or a link changed: a refused model may be good now."""
        if self.error is not None:
            self.retry_at = min(self.retry_at, self._clock() + POKE_DELAY)

    def tick(self) -> bool:
        """Retries when due; re-reads the facts when nftables changed. True when the policy
        changed (verdicts made with the old one should go)."""
        before = self.policy
        if self._clock() >= self.retry_at:
            self.refresh()
        elif self._good is not None and self.error is None:
            model, reading, taken = self._good
            gen = self._router.generation()
            if gen is not None and gen != reading.generation:
                try:
                    new = self._router.read(model)
                except (OSError, ValueError) as e:
                    self._refused(f"reading the router again: {e}")
                    return self.policy is not before
                if new.fingerprint != reading.fingerprint:
                    self.refresh()     # fw4 reloaded (its resync may still be on its way)
                else:
                    self._good = (model, new, taken)
                    if new.facts.mark_setter != reading.facts.mark_setter or \
                            new.facts.sets != reading.facts.sets:
                        self.policy = self._make_policy(model, new.facts)
        return self.policy is not before

    # -- status ---------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        now = self._clock()
        using = self.policy is not None
        out: dict[str, Any] = {
            "state": "ok" if self.error is None and using else
                     "refused, last good model kept" if using else "off",
            "model_age_s": round(now - self._good[2], 1) if using and self._good else None,
            "refusals": self.refusals,
        }
        if self.error is not None:
            out["error"] = self.error
            out["retry_in_s"] = round(max(0.0, self.retry_at - now), 1)
        if using and self.policy is not None:
            out["mark_setter"] = self.policy.facts.mark_setter
            out["undecidable_sets"] = sorted(str(v) for v in self.policy.facts.sets.values()
                                             if isinstance(v, str))
        return out
