// SPDX-License-Identifier: GPL-2.0-only
/*
 * Receiver for the forwarding benchmarks: counts and drops every IPv4/IPv6
 * UDP frame (the benchmark traffic), passes the rest (ARP, ND, ICMP).
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} sink_count SEC(".maps");

SEC("xdp")
int sink(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	__u32 zero = 0;
	__u64 *n;
	__u8 proto;

	if ((void *)(eth + 1) > end)
		return XDP_PASS;
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);

		if ((void *)(ip + 1) > end)
			return XDP_PASS;
		proto = ip->protocol;
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);

		if ((void *)(ip6 + 1) > end)
			return XDP_PASS;
		proto = ip6->nexthdr;
	} else {
		return XDP_PASS;
	}
	if (proto != IPPROTO_UDP)
		return XDP_PASS;
	n = bpf_map_lookup_elem(&sink_count, &zero);
	if (n)
		(*n)++;
	return XDP_DROP;
}

char _license[] SEC("license") = "GPL";
