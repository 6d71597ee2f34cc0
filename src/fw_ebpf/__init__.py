# SPDX-License-Identifier: GPL-2.0-only
"""ebpfw: eBPF flow offloading for OpenWrt's firewall4."""
