// SPDX-License-Identifier: GPL-2.0-only
/*
 * ebpfw fast path: forwards packets of connections the kernel already
 * accepted, drops flows fw4 drops, and passes everything else untouched.
 * One core, two entry points: XDP (ebpfw_xdp) and TC ingress (ebpfw_tc).
 */
#include <stdbool.h>
#include <stddef.h>
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include "ebpfw/abi.h"
#include "parse.h"
#include "rewrite.h"

/* Headers the TC program wants in the linear part of the skb */
#define TC_PULL_LEN	(L2_MAX_LEN + sizeof(struct ipv6hdr) + sizeof(struct tcphdr))

const volatile struct ebpfw_config ebpfw_cfg SEC(".rodata.config") = {
	.heartbeat_timeout_ns = 5000000000ULL,
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, EBPFW_FLOWS_DEFAULT);
	__type(key, struct ebpfw_flow_key);
	__type(value, struct ebpfw_flow);
} ebpfw_flows SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct ebpfw_stats);
} ebpfw_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct ebpfw_runtime);
} ebpfw_runtime SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, EBPFW_EVENTS_BYTES);
} ebpfw_events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_DEVMAP_HASH);
	__uint(max_entries, EBPFW_TX_MAX);
	__type(key, __u32);
	__type(value, __u32);
} ebpfw_tx SEC(".maps");

enum verdict {
	V_PASS,
	V_DROP,
	V_FORWARD,
};

static __always_inline void count(struct ebpfw_stats *st, __u32 idx)
{
	if (idx < EBPFW_CNT_MAX)
		st->counters[idx]++;
}

static __always_inline enum verdict pass(struct ebpfw_stats *st, __u32 reason)
{
	count(st, EBPFW_CNT_PASS);
	count(st, reason);
	return V_PASS;
}

static __always_inline void notify(struct ebpfw_stats *st, const struct ebpfw_flow_key *key,
				   __u32 type)
{
	struct ebpfw_event ev = { .key = *key, .type = type };

	if (bpf_ringbuf_output(&ebpfw_events, &ev, sizeof(ev), 0))
		count(st, EBPFW_CNT_EVENT_LOST);
}

/*
 * Fail open: without a live daemon nobody keeps the flow table true. Signed,
 * because the coarse clock may lag the fine one the daemon wrote by a tick.
 */
static __always_inline bool heartbeat_fresh(__u64 now)
{
	__u32 zero = 0;
	struct ebpfw_runtime *rt = bpf_map_lookup_elem(&ebpfw_runtime, &zero);

	return rt && rt->heartbeat_ns &&
	       (__s64)(now - rt->heartbeat_ns) <= (__s64)ebpfw_cfg.heartbeat_timeout_ns;
}

/*
 * Unknown flow: note it once for the daemon (BPF_NOEXIST makes it once). The
 * fine clock, once per flow: the daemon measures admission latency from it.
 */
static __always_inline enum verdict flow_miss(struct ebpfw_stats *st, struct pkt *p)
{
	struct ebpfw_flow pending = { .state = EBPFW_PENDING, .last_seen_ns = bpf_ktime_get_ns() };

	if (p->tcp_flags & (TCPF_FIN_ | TCPF_RST_))
		return pass(st, EBPFW_PASS_TCP_CLOSE);
	if (!bpf_map_update_elem(&ebpfw_flows, &p->key, &pending, BPF_NOEXIST))
		notify(st, &p->key, EBPFW_EV_NEW);
	return pass(st, EBPFW_PASS_MISS);
}

/* A packet the fast path handles itself (forwarded or dropped) */
static __always_inline void account(struct ebpfw_flow *f, const struct pkt *p, __u64 now)
{
	f->packets++;
	f->bytes += p->l3_len;
	f->last_seen_ns = now;
}

/*
 * The decision shared by both hooks. FORWARD only when every check that the
 * fast path cannot do as well as the stack has passed; nothing is modified.
 */
static __always_inline enum verdict decide(struct ebpfw_stats *st, struct pkt *p,
					   struct ebpfw_flow **flow, bool xdp)
{
	/* CLOCK_MONOTONIC at tick resolution: every use is in seconds, and the fine
	 * clock costs ~20 ns a packet in a VM (a third of a DROP) */
	__u64 now = bpf_ktime_get_coarse_ns();
	struct ebpfw_flow *f;

	if (!heartbeat_fresh(now))
		return pass(st, EBPFW_PASS_HEARTBEAT);
	f = bpf_map_lookup_elem(&ebpfw_flows, &p->key);
	if (!f)
		return flow_miss(st, p);

	switch (f->state) {
	case EBPFW_PENDING:
		return pass(st, EBPFW_PASS_PENDING);
	case EBPFW_DROP:
		if (now >= f->expires_ns)
			return pass(st, EBPFW_PASS_DROP_EXPIRED);
		account(f, p, now);
		count(st, EBPFW_CNT_DROP);
		return V_DROP;
	case EBPFW_FORWARD:
		break;
	default:
		return pass(st, EBPFW_PASS_VERDICT);
	}

	if (f->flags & EBPFW_F_CLOSING)
		return pass(st, EBPFW_PASS_CLOSING);
	if (p->tcp_flags & (TCPF_FIN_ | TCPF_RST_)) {
		/* the stack sees the close and conntrack follows it */
		f->flags |= EBPFW_F_CLOSING;
		notify(st, &p->key, EBPFW_EV_CLOSING);
		return pass(st, EBPFW_PASS_TCP_CLOSE);
	}
	if (p->tcp_flags & TCPF_SYN_)
		return pass(st, EBPFW_PASS_TCP_SYN);
	if (xdp && (f->flags & EBPFW_F_TC_ONLY))
		return pass(st, EBPFW_PASS_OTHER_HOOK);
	if (p->ttl <= 1)
		return pass(st, EBPFW_PASS_TTL);
	if (p->key.l3proto == EBPFW_L3_IPV6 && p->key.l4proto == IPPROTO_UDP &&
	    ((struct udphdr *)p->l4)->check == 0)
		return pass(st, EBPFW_PASS_UDP_ZERO_CSUM);

	account(f, p, now);
	*flow = f;
	return V_FORWARD;
}

static __always_inline struct ebpfw_stats *stats(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&ebpfw_stats, &zero);
}

SEC("xdp")
int ebpfw_xdp(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct pkt p = { .key.ifindex = ctx->ingress_ifindex, .key.dsa_port = EBPFW_NO_DSA_PORT };
	struct ebpfw_stats *st = stats();
	struct ebpfw_flow *f = NULL;
	__u32 l2_out, oif;
	int ret;

	if (!st)
		return XDP_PASS;
	count(st, EBPFW_CNT_RX);
	if ((ret = parse_packet(data, end, end - data, &p))) {
		pass(st, ret);
		return XDP_PASS;
	}
	switch (decide(st, &p, &f, true)) {
	case V_DROP:
		return XDP_DROP;
	case V_PASS:
		return XDP_PASS;
	case V_FORWARD:
		break;
	}
	if (!f)
		return XDP_PASS;
	if (p.l3_len > f->mtu) {
		pass(st, EBPFW_PASS_MTU);
		return XDP_PASS;
	}
	oif = f->oif;
	if (!bpf_map_lookup_elem(&ebpfw_tx, &oif)) {
		pass(st, EBPFW_PASS_NO_TX);
		return XDP_PASS;
	}

	/* Move the IP header's start to match the egress L2 length first: if
	 * that fails, nothing has been changed yet. */
	l2_out = l2_len_out(f);
	if (bpf_xdp_adjust_head(ctx, (int)p.l2_len - (int)l2_out)) {
		pass(st, EBPFW_PASS_L2_REWRITE);
		return XDP_PASS;
	}
	data = (void *)(long)ctx->data;
	end = (void *)(long)ctx->data_end;
	if (l2_out > L2_MAX_LEN || write_l2(data, end, f, &p) ||
	    rewrite_l3l4(data + l2_out, end, f, &p, 1)) {
		count(st, EBPFW_CNT_REWRITE_ERROR);
		return XDP_DROP;
	}
	count(st, EBPFW_CNT_FORWARD);
	return bpf_redirect_map(&ebpfw_tx, oif, 0);
}

/* L3 length of each segment the egress will send (GSO: per segment) */
static __always_inline __u32 tc_seg_len(struct __sk_buff *ctx, const struct pkt *p)
{
	if (!ctx->gso_size)
		return p->l3_len;
	return (p->l4 - p->l3) + p->l4_hlen + ctx->gso_size;
}

/*
 * TC cannot remove L2 bytes below the IP header of an skb whose protocol is
 * not IP (bpf_skb_adjust_room refuses it), so a PPPoE session cannot end
 * here; and the PPPoE length of a GSO skb would be wrong for its segments.
 */
static __always_inline bool tc_can_rewrite_l2(struct __sk_buff *ctx, const struct pkt *p,
					      const struct ebpfw_flow *f)
{
	if (p->pppoe && !(f->flags & EBPFW_F_PPPOE))
		return false;
	if ((f->flags & EBPFW_F_PPPOE) && ctx->gso_size)
		return false;
	return true;
}

/* Strip every VLAN tag (in data or metadata), then grow to the egress L2 */
static __always_inline int tc_adjust_l2(struct __sk_buff *ctx, const struct pkt *p, __u32 l2_out)
{
	__u32 l2_now = ETH_HLEN + (p->pppoe ? PPPOE_HLEN : 0);

	for (int i = 0; i < 2; i++)
		if (i < p->vlans && bpf_skb_vlan_pop(ctx))
			return -1;
	if (l2_out > l2_now && bpf_skb_change_head(ctx, l2_out - l2_now, 0))
		return -1;
	return 0;
}

SEC("tc")
int ebpfw_tc(struct __sk_buff *ctx)
{
	struct pkt p = { .key.ifindex = ctx->ifindex, .key.dsa_port = EBPFW_NO_DSA_PORT };
	struct ebpfw_stats *st = stats();
	struct ebpfw_flow *f = NULL;
	__u32 l2_out, l4_check, csum_flags, l4_diff_addr, l4_diff_port;
	void *data, *end;
	int ret;

	if (!st)
		return TC_ACT_UNSPEC;
	count(st, EBPFW_CNT_RX);
	if (ctx->data + TC_PULL_LEN > ctx->data_end && ctx->len > ctx->data_end - ctx->data)
		bpf_skb_pull_data(ctx, ctx->len < TC_PULL_LEN ? ctx->len : TC_PULL_LEN);
	data = (void *)(long)ctx->data;
	end = (void *)(long)ctx->data_end;

	/* the kernel moves the outer tag of a received frame into metadata */
	if (ctx->vlan_present) {
		p.key.vlan[0] = ctx->vlan_tci & 0x0fff;
		p.vlans = 1;
	}
	if ((ret = parse_packet(data, end, ctx->len, &p))) {
		pass(st, ret);
		return TC_ACT_UNSPEC;
	}
	switch (decide(st, &p, &f, false)) {
	case V_DROP:
		return TC_ACT_SHOT;
	case V_PASS:
		return TC_ACT_UNSPEC;	/* lets other tc filters (qosify, ...) run */
	case V_FORWARD:
		break;
	}
	if (!f)
		return TC_ACT_UNSPEC;
	if (tc_seg_len(ctx, &p) > f->mtu) {
		pass(st, EBPFW_PASS_MTU);
		return TC_ACT_UNSPEC;
	}
	if (!tc_can_rewrite_l2(ctx, &p, f)) {
		pass(st, EBPFW_PASS_L2_REWRITE);
		return TC_ACT_UNSPEC;
	}

	l2_out = l2_len_out(f);
	l4_check = l2_out + (p.l4 - p.l3) + l4_csum_off(&p);
	l4_diff_addr = f->csum_addr;
	l4_diff_port = f->csum_port;
	csum_flags = p.key.l4proto == IPPROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0;
	if (tc_adjust_l2(ctx, &p, l2_out))
		goto error;
	data = (void *)(long)ctx->data;
	end = (void *)(long)ctx->data_end;
	if (l2_out > L2_MAX_LEN || write_l2(data, end, f, &p) ||
	    rewrite_l3l4(data + l2_out, end, f, &p, 0))
		goto error;
	if (f->flags & EBPFW_F_NAT) {
		if (bpf_l4_csum_replace(ctx, l4_check, 0, l4_diff_addr, csum_flags | BPF_F_PSEUDO_HDR) ||
		    bpf_l4_csum_replace(ctx, l4_check, 0, l4_diff_port, csum_flags))
			goto error;
	}
	count(st, EBPFW_CNT_FORWARD);
	return bpf_redirect(f->oif, 0);
error:
	/* the packet may be half rewritten: it cannot go to the stack */
	count(st, EBPFW_CNT_REWRITE_ERROR);
	return TC_ACT_SHOT;
}

char _license[] SEC("license") = "GPL";

/* Never called: puts the ring buffer record in BTF, where tests/test_abi.py checks it */
__attribute__((noinline, used)) int ebpfw_btf_event(struct ebpfw_event *ev)
{
	return ev ? ev->type : 0;
}
