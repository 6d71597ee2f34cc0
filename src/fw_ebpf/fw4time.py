# SPDX-License-Identifier: GPL-2.0-only
"""Whether a fw4 time window is open at a moment, the way the kernel decides it.

rule.uc writes `meta hour "HH:MM:SS"-"HH:MM:SS"`, `meta day {...}` and `meta time A-B`.
nft turns the local times of day into seconds after UTC midnight with the UTC offset in force
when it loads the ruleset (hour_type_parse), and a range that then runs backwards (past UTC
midnight) into `!= stop-start`; the kernel compares them with the UTC time of day
(nft_meta_hour). `meta day` counts days in the kernel's own timezone (sys_tz, set by
`date -k` on OpenWrt), not in TZ (nft_meta_weekday). Ranges include both ends.

Dates are decided only more than a day away from their bound, where no UTC offset can change
the answer; closer than that the window is "unknown".
"""
from __future__ import annotations

from dataclasses import dataclass

from .fw4 import TimeMatch

DAY = 86400
_DATE_MARGIN = DAY   # more than any UTC offset (-12 h .. +14 h)


@dataclass(frozen=True)
class WindowState:
    open: bool | None     # None: cannot tell (a date bound within a day)
    until: float          # wall-clock time before which the answer cannot change


def utc_seconds(local: int, gmtoff: int) -> int:
    """A local time of day as nft stores it: seconds after UTC midnight."""
    return (local - gmtoff) % DAY


def _next(now: int, second_of_day: int) -> int:
    """The first moment after now whose UTC time of day is second_of_day."""
    at = now - now % DAY + second_of_day % DAY
    return at if at > now else at + DAY


def window_state(tm: TimeMatch, now: float, gmtoff: int, kernel_west: int = 0) -> WindowState:
    """The window at `now` (seconds since the epoch). gmtoff: the local offset east of UTC nft
    used when it loaded the ruleset; kernel_west: sys_tz.tz_minuteswest."""
    t_now = int(now)
    t = t_now % DAY
    parts: list[bool | None] = []
    flips: list[int] = []
    if tm.start is not None or tm.stop is not None:
        a = None if tm.start is None else utc_seconds(tm.start, gmtoff)
        b = None if tm.stop is None else utc_seconds(tm.stop, gmtoff)
        if a is not None and b is not None:
            if a <= b:
                parts.append(a <= t <= b)
                flips += [_next(t_now, a), _next(t_now, b + 1)]
            else:       # nft: != b-a
                parts.append(not b <= t <= a)
                flips += [_next(t_now, b), _next(t_now, a + 1)]
        elif a is not None:
            parts.append(t >= a)
            flips += [_next(t_now, a), _next(t_now, 0)]
        elif b is not None:
            parts.append(t <= b)
            flips += [_next(t_now, b + 1), _next(t_now, 0)]
    if tm.weekdays is not None:
        local = t_now - 60 * kernel_west
        day = (local // DAY + 4) % 7      # 1970-01-01 was a Thursday; Sunday is 0
        parts.append((day in tm.weekdays) != tm.weekdays_invert)
        flips.append(t_now + DAY - local % DAY)
    for bound, after in ((tm.start_date, True), (tm.stop_date, False)):
        if bound is None:
            continue
        if now >= bound + _DATE_MARGIN:
            parts.append(after)
        elif now < bound - _DATE_MARGIN:
            parts.append(not after)
        else:
            parts.append(None)
        flips += [x for x in (bound - _DATE_MARGIN, bound + _DATE_MARGIN) if x > now]
    until = float(min(flips)) if flips else float("inf")
    if False in parts:
        return WindowState(False, until)
    if None in parts:
        return WindowState(None, until)
    return WindowState(True, until)


def nft_hour_values(tm: TimeMatch, gmtoff: int) -> set[int]:
    """The `meta hour` values nft stores for this window (to compare with the kernel's)."""
    return {utc_seconds(x, gmtoff) for x in (tm.start, tm.stop) if x is not None}
