// SPDX-License-Identifier: GPL-2.0-only
/*
 * The far end of the control-path benchmark's flows (bench/flows.py): every IPv4 UDP
 * datagram to REFLECT_ADDR with a destination port in [REFLECT_PORT_MIN, REFLECT_PORT_MAX)
 * goes back where it came from (MACs, addresses and ports swapped, XDP_TX), so each flow has
 * packets in both directions without a socket per port. Swapping leaves the IP and UDP
 * checksums valid (both are sums that do not depend on the order of the swapped fields).
 * Everything else passes.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define REFLECT_ADDR     0xC6336414u   /* 198.51.100.20, tests/lab.py SERVER4 */
#define REFLECT_PORT_MIN 10000
#define REFLECT_PORT_MAX 60000

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} reflect_count SEC(".maps");

static __always_inline void swap_bytes(__u8 *a, __u8 *b, int n)
{
	for (int i = 0; i < n; i++) {
		__u8 t = a[i];

		a[i] = b[i];
		b[i] = t;
	}
}

SEC("xdp")
int reflect(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);
	struct udphdr *udp = (void *)(ip + 1);
	__u32 zero = 0, saddr;
	__u16 port, sport;
	__u64 *n;

	if ((void *)(udp + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP) || ip->ihl != 5 ||
	    ip->protocol != IPPROTO_UDP || ip->daddr != bpf_htonl(REFLECT_ADDR))
		return XDP_PASS;
	port = bpf_ntohs(udp->dest);
	if (port < REFLECT_PORT_MIN || port >= REFLECT_PORT_MAX)
		return XDP_PASS;
	swap_bytes(eth->h_dest, eth->h_source, ETH_ALEN);
	saddr = ip->saddr;
	ip->saddr = ip->daddr;
	ip->daddr = saddr;
	sport = udp->source;
	udp->source = udp->dest;
	udp->dest = sport;
	n = bpf_map_lookup_elem(&reflect_count, &zero);
	if (n)
		(*n)++;
	return XDP_TX;
}

char _license[] SEC("license") = "GPL";
