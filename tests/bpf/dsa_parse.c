// SPDX-License-Identifier: GPL-2.0-only
/*
 * The fast path's parse step on its own, for the tests: built per DSA tag from
 * the same headers as the shipped objects (tests only, never installed).
 * dsa_parse_rx / dsa_parse_tx parse a frame in the RX (switch -> CPU) or TX
 * (CPU -> switch) tag format and store what they learned in dsa_parse_out.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "parse.h"

struct dsa_parse_out {
	__s32 ret;		/* 0 or the EBPFW_PASS_* reason */
	__u8 dsa_port;
	__u8 vlans;
	__u16 vlan[2];
	__be16 vlan_tpid;
	__u16 l2_len;
	__u8 l3proto;
	__u8 l4proto;
	__be16 sport;
	__be16 dport;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct dsa_parse_out);
} dsa_parse_out SEC(".maps");

static __always_inline int run(struct xdp_md *ctx, enum dsa_dir dir)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct dsa_parse_out *out;
	struct pkt p;
	__u32 zero = 0;

	out = bpf_map_lookup_elem(&dsa_parse_out, &zero);
	if (!out)
		return XDP_ABORTED;
	pkt_init(&p, ctx->ingress_ifindex);
	p.vlan_tpid = 0;
	p.l2_len = 0;
	p.l3proto = 0;
	p.key.v6.l4proto = 0;
	p.key.v6.sport = 0;
	p.key.v6.dport = 0;
	out->ret = parse_packet(data, end, end - data, &p, dir);
	out->dsa_port = p.key.v6.dsa_port;
	out->vlans = p.vlans;
	out->vlan[0] = p.key.v6.vlan[0];
	out->vlan[1] = p.key.v6.vlan[1];
	out->vlan_tpid = p.vlan_tpid;
	out->l2_len = p.l2_len;
	out->l3proto = p.l3proto;
	out->l4proto = p.key.v6.l4proto;
	out->sport = p.key.v6.sport;
	out->dport = p.key.v6.dport;
	return XDP_PASS;
}

SEC("xdp")
int dsa_parse_rx(struct xdp_md *ctx)
{
	return run(ctx, DSA_RX);
}

SEC("xdp")
int dsa_parse_tx(struct xdp_md *ctx)
{
	return run(ctx, DSA_TX);
}

char _license[] SEC("license") = "GPL";
