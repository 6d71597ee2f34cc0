// SPDX-License-Identifier: GPL-2.0-only
/*
 * Receiver for the forwarding benchmarks: counts and drops every IPv4/IPv6
 * UDP frame (the benchmark traffic), passes the rest (ARP, ND, ICMP). The
 * same at TC ingress (tc_sink): the cheapest TC drop, the early-drop floor.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} sink_count SEC(".maps");

static __always_inline int is_udp(void *data, void *end)
{
	struct ethhdr *eth = data;
	__u8 proto;

	if ((void *)(eth + 1) > end)
		return 0;
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);

		if ((void *)(ip + 1) > end)
			return 0;
		proto = ip->protocol;
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);

		if ((void *)(ip6 + 1) > end)
			return 0;
		proto = ip6->nexthdr;
	} else {
		return 0;
	}
	return proto == IPPROTO_UDP;
}

static __always_inline void counted(void)
{
	__u32 zero = 0;
	__u64 *n = bpf_map_lookup_elem(&sink_count, &zero);

	if (n)
		(*n)++;
}

SEC("xdp")
int sink(struct xdp_md *ctx)
{
	if (!is_udp((void *)(long)ctx->data, (void *)(long)ctx->data_end))
		return XDP_PASS;
	counted();
	return XDP_DROP;
}

SEC("tc")
int tc_sink(struct __sk_buff *ctx)
{
	if (!is_udp((void *)(long)ctx->data, (void *)(long)ctx->data_end))
		return TC_ACT_UNSPEC;
	counted();
	return TC_ACT_SHOT;
}

char _license[] SEC("license") = "GPL";
