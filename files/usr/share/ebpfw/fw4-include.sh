# SPDX-License-Identifier: GPL-2.0-only
# shellcheck shell=sh
#
# fw4 sources this after every start and reload, while it still holds its lock. So: ask the
# running daemon for a resync in the background and return at once; never block fw4, never
# fail it. Nothing happens when ebpfw does not run. No UCI here (fw4 forbids it in includes).

(
	if ubus -S list ebpfw >/dev/null 2>&1; then
		ubus -t 5 call ebpfw resync
	elif [ -S /var/run/ebpfw.sock ]; then
		/usr/sbin/ebpfw resync
	fi
) </dev/null >/dev/null 2>&1 &

true
