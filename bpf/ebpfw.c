// SPDX-License-Identifier: GPL-2.0-only
/*
 * ebpfw fast path: forwards packets of connections the kernel already
 * accepted, drops flows fw4 drops, and passes everything else untouched.
 * One core, two entry points: XDP (ebpfw_xdp) and TC ingress (ebpfw_tc); and
 * on egress the proof (ebpfw_egress): a flow is forwarded here only after
 * the kernel was seen forwarding one of its packets, with the L2 header it
 * wrote then. Built once without DSA tag code and once per DSA tag protocol
 * (-DEBPFW_DSA_TAG names the header rendered from bpf/dsa/tag.h.j2).
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
#define NSEC_PER_SEC	1000000000ULL

/* One key serves both tables: IPv4 hashes its first 24 bytes */
_Static_assert(sizeof(struct ebpfw_key4) == 24 && sizeof(struct ebpfw_key6) == 48,
	       "flow keys without padding");
_Static_assert(offsetof(struct ebpfw_key4, saddr) == offsetof(struct ebpfw_key6, saddr),
	       "flow keys share their head");

#ifdef EBPFW_DSA_TAG
/* The tag this object speaks: the loader checks it against the conduit's */
const char ebpfw_dsa_tag[] SEC(".rodata.dsa") = DSA_TAG_NAME;
#endif

const volatile struct ebpfw_config ebpfw_cfg SEC(".rodata.config") = {
	.heartbeat_timeout_ns = 5 * NSEC_PER_SEC,
	.event_interval_ns = NSEC_PER_SEC / 16384,
	.event_burst_ns = NSEC_PER_SEC / 16384 * 16384,
};

#define FLOW_TABLE(name, key_type, entries)			\
	struct {						\
		__uint(type, BPF_MAP_TYPE_LRU_HASH);		\
		__uint(max_entries, entries);			\
		__type(key, key_type);				\
		__type(value, struct ebpfw_flow);		\
	} name SEC(".maps")

FLOW_TABLE(ebpfw_flows4, struct ebpfw_key4, EBPFW_FLOWS_DEFAULT);
FLOW_TABLE(ebpfw_flows6, struct ebpfw_key6, EBPFW_FLOWS_DEFAULT);
FLOW_TABLE(ebpfw_pending4, struct ebpfw_key4, EBPFW_PENDING_DEFAULT);
FLOW_TABLE(ebpfw_pending6, struct ebpfw_key6, EBPFW_PENDING_DEFAULT);

/* The flows waiting for proof or for re-proof, by the tuple they leave with.
 * The value is a whole union for either family: what the egress program hands
 * on is then in bounds whichever family the verifier follows. */
#define EGRESS_INDEX(name, key_type)				\
	struct {						\
		__uint(type, BPF_MAP_TYPE_HASH);		\
		__uint(max_entries, EBPFW_EGRESS_DEFAULT);	\
		__uint(map_flags, BPF_F_NO_PREALLOC);		\
		__type(key, key_type);				\
		__type(value, union ebpfw_key);			\
	} name SEC(".maps")

EGRESS_INDEX(ebpfw_egress4, struct ebpfw_key4);
EGRESS_INDEX(ebpfw_egress6, struct ebpfw_key6);

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

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, EBPFW_MACS_MAX);
	__type(key, struct ebpfw_mac);
	__type(value, __u32);
} ebpfw_macs SEC(".maps");

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

/*
 * Fail open: without a live daemon nobody keeps the flow table true. Signed,
 * because the coarse clock may lag the fine one the daemon wrote by a tick.
 */
static __always_inline bool heartbeat_fresh(const struct ebpfw_runtime *rt, __u64 now)
{
	return rt->heartbeat_ns &&
	       (__s64)(now - rt->heartbeat_ns) <= (__s64)ebpfw_cfg.heartbeat_timeout_ns;
}

/*
 * Every use of time is at tick resolution, so each CPU reads the clock, judges
 * the heartbeat and takes the runtime's generation once per tick; jiffies (a
 * plain load on 64-bit JITs) says when the tick changed. A new generation is
 * thus in force on every CPU one tick after the daemon wrote it.
 */
static __always_inline void clock_tick(struct ebpfw_stats *st)
{
	__u64 tick = bpf_jiffies64();
	__u32 zero = 0;
	struct ebpfw_runtime *rt;

	if (tick == st->tick)
		return;
	st->tick = tick;
	st->now_ns = bpf_ktime_get_coarse_ns();
	rt = bpf_map_lookup_elem(&ebpfw_runtime, &zero);
	if (!rt) {
		st->fresh = 0;
		return;
	}
	st->fresh = heartbeat_fresh(rt, st->now_ns);
	st->gen = rt->gen;
	st->proving = rt->proving;
}

/*
 * Each map helper call must name one map: were the compiler to merge the IPv4
 * and the IPv6 call into one taking either map, the verifier could not inline
 * the lookup for its map and every packet would pay the generic helper. The
 * empty asm on the IPv4 side keeps the two calls apart.
 */
#define KEEP_APART(x)	asm volatile("" : "+r"(x))

/* The decided or the pending entry of the packet's flow, by address family */
static __always_inline struct ebpfw_flow *lookup(void *table4, void *table6, struct pkt *p)
{
	struct ebpfw_flow *f;

	if (p->l3proto == EBPFW_L3_IPV4) {
		f = bpf_map_lookup_elem(table4, &p->key.v4);
		KEEP_APART(f);
	} else {
		f = bpf_map_lookup_elem(table6, &p->key.v6);
	}
	return f;
}

static __always_inline void notify_key(struct ebpfw_stats *st, __u8 l3proto,
				       const union ebpfw_key *key, __u32 type, __u64 first_ns)
{
	struct ebpfw_event ev = { .type = type, .l3proto = l3proto, .first_ns = first_ns };

	if (l3proto == EBPFW_L3_IPV4)
		ev.key.v4 = key->v4;
	else
		ev.key.v6 = key->v6;
	if (bpf_ringbuf_output(&ebpfw_events, &ev, sizeof(ev), 0))
		count(st, EBPFW_CNT_EVENT_LOST);
}

static __always_inline void notify(struct ebpfw_stats *st, const struct pkt *p, __u32 type,
				   __u64 first_ns)
{
	notify_key(st, p->l3proto, &p->key, type, first_ns);
}

/*
 * Token bucket of NEW events, per CPU, on the tick clock. NEW events also keep
 * out of the second half of the ring: a lost proof or close is found again only
 * by the sweep's cycle, a shed NEW within a tenth of a second (pending table).
 */
static __always_inline bool event_allowed(struct ebpfw_stats *st)
{
	__u64 credit = st->ev_credit_ns + (st->now_ns - st->ev_clock_ns);

	if (!ebpfw_cfg.event_interval_ns)
		return true;
	if (bpf_ringbuf_query(&ebpfw_events, BPF_RB_AVAIL_DATA) > EBPFW_EVENTS_BYTES / 2) {
		count(st, EBPFW_CNT_EVENT_SHED);
		return false;
	}
	if (credit > ebpfw_cfg.event_burst_ns)
		credit = ebpfw_cfg.event_burst_ns;
	st->ev_clock_ns = st->now_ns;
	if (credit < ebpfw_cfg.event_interval_ns) {
		st->ev_credit_ns = credit;
		count(st, EBPFW_CNT_EVENT_SHED);
		return false;
	}
	st->ev_credit_ns = credit - ebpfw_cfg.event_interval_ns;
	return true;
}

/* A packet the fast path handles itself (forwarded or dropped) */
static __always_inline void account(struct ebpfw_stats *st, struct ebpfw_flow *f,
				    const struct pkt *p)
{
	f->packets++;
	f->bytes += p->l3_len;
	f->last_seen_ns = st->now_ns;
}

/* An early-drop verdict: fw4 drops the flow for certain, until it expires */
static __always_inline enum verdict drop_verdict(struct ebpfw_stats *st,
						 struct ebpfw_flow *f,
						 const struct pkt *p)
{
	if (f->gen != st->gen)	/* decided under another ruleset */
		return pass(st, EBPFW_PASS_STALE);
	if (st->now_ns >= f->expires_ns)
		return pass(st, EBPFW_PASS_DROP_EXPIRED);
	account(st, f, p);
	count(st, EBPFW_CNT_DROP);
	return V_DROP;
}

/*
 * Not decided: a DROP verdict, or a flow the daemon has yet to decide, or an
 * unknown flow, noted once for the daemon in the pending table (BPF_NOEXIST
 * makes it once). The fine clock, once per flow: the daemon measures
 * admission latency from it.
 */
static __always_inline enum verdict flow_miss(struct ebpfw_stats *st, struct pkt *p)
{
	struct ebpfw_flow pending = { .state = EBPFW_PENDING };
	struct ebpfw_flow *f;
	long err;

	f = lookup(&ebpfw_pending4, &ebpfw_pending6, p);
	if (f)
		return f->state == EBPFW_DROP ? drop_verdict(st, f, p)
					      : pass(st, EBPFW_PASS_PENDING);
	if (p->tcp_flags & (TCPF_FIN_ | TCPF_RST_))
		return pass(st, EBPFW_PASS_TCP_CLOSE);
	pending.last_seen_ns = bpf_ktime_get_ns();
	if (p->l3proto == EBPFW_L3_IPV4) {
		err = bpf_map_update_elem(&ebpfw_pending4, &p->key.v4, &pending, BPF_NOEXIST);
		KEEP_APART(err);
	} else {
		err = bpf_map_update_elem(&ebpfw_pending6, &p->key.v6, &pending, BPF_NOEXIST);
	}
	if (!err && event_allowed(st))
		notify(st, p, EBPFW_EV_NEW, pending.last_seen_ns);
	return pass(st, EBPFW_PASS_MISS);
}

/*
 * The decision shared by both hooks. FORWARD only when every check that the
 * fast path cannot do as well as the stack has passed; nothing is modified.
 */
static __always_inline enum verdict decide(struct ebpfw_stats *st, struct pkt *p,
					   struct ebpfw_flow **flow, bool xdp)
{
	struct ebpfw_flow *f;

	clock_tick(st);
	if (!st->fresh)
		return pass(st, EBPFW_PASS_HEARTBEAT);
	f = lookup(&ebpfw_flows4, &ebpfw_flows6, p);
	if (!f)
		return flow_miss(st, p);

	switch (f->state) {
	case EBPFW_PENDING:
		return pass(st, EBPFW_PASS_PENDING);
	case EBPFW_PROVING:
		return pass(st, EBPFW_PASS_PROVING);
	case EBPFW_FORWARD:
		break;
	default:
		return pass(st, EBPFW_PASS_VERDICT);
	}
	if (f->gen != st->gen)
		return pass(st, EBPFW_PASS_STALE);

	if (f->flags & EBPFW_F_CLOSING)
		return pass(st, EBPFW_PASS_CLOSING);
	if (p->tcp_flags & (TCPF_FIN_ | TCPF_RST_)) {
		/* the stack sees the close and conntrack follows it */
		f->flags |= EBPFW_F_CLOSING;
		notify(st, p, EBPFW_EV_CLOSING, 0);
		return pass(st, EBPFW_PASS_TCP_CLOSE);
	}
	if (p->tcp_flags & TCPF_SYN_)
		return pass(st, EBPFW_PASS_TCP_SYN);
	if (xdp && (f->flags & EBPFW_F_TC_ONLY))
		return pass(st, EBPFW_PASS_OTHER_HOOK);
	if (p->ttl <= 1)
		return pass(st, EBPFW_PASS_TTL);
	if (p->l3proto == EBPFW_L3_IPV6 && p->key.v6.l4proto == IPPROTO_UDP &&
	    ((struct udphdr *)p->l4)->check == 0)
		return pass(st, EBPFW_PASS_UDP_ZERO_CSUM);

	*flow = f;
	return V_FORWARD;
}

/* Frames on this device carry the object's DSA tag (switch -> CPU) */
static __always_inline enum dsa_dir rx_dir(__u32 ifindex)
{
#ifdef EBPFW_DSA_TAG
	for (int i = 0; i < EBPFW_DSA_CONDUITS; i++)
		if (ebpfw_cfg.dsa_conduits[i] && ebpfw_cfg.dsa_conduits[i] == ifindex)
			return DSA_RX;
#endif
	return DSA_NONE;
}

/* What the kernel sends on a conduit carries the tag the DSA tagger wrote */
static __always_inline enum dsa_dir tx_dir(__u32 ifindex)
{
	return rx_dir(ifindex) == DSA_RX ? DSA_TX : DSA_NONE;
}

/*
 * Bytes to append before pushing the flow's DSA tag: the kernel's tagger
 * pads shorter frames first (some switches drop them otherwise).
 */
static __always_inline __u32 dsa_pad(const struct ebpfw_flow *f, const struct pkt *p,
				     __u32 frame_len, __u32 l2_out)
{
#if defined(EBPFW_DSA_TAG) && DSA_PAD_TO
	__u32 untagged = l2_out - dsa_push_len(f) + (frame_len - p->l2_len);

	if (f->l2.dsa_port != EBPFW_NO_DSA_PORT && untagged < DSA_PAD_TO)
		return DSA_PAD_TO - untagged;
#endif
	return 0;
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
	struct ebpfw_stats *st = stats();
	struct pkt p;
	struct ebpfw_flow *f = NULL;
	__u32 l2_out, pad;
	int ret;

	if (!st)
		return XDP_PASS;
	count(st, EBPFW_CNT_RX);
	pkt_init(&p, ctx->ingress_ifindex);
	if ((ret = parse_packet(data, end, end - data, &p, rx_dir(ctx->ingress_ifindex)))) {
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
	if (!dsa_can_push(f)) {
		pass(st, EBPFW_PASS_L2_REWRITE);
		return XDP_PASS;
	}
	/* One call looks the egress up and notes the redirect; nothing has been
	 * changed yet if the device is not there */
	if (bpf_redirect_map(&ebpfw_tx, f->oif, XDP_PASS) != XDP_REDIRECT) {
		pass(st, EBPFW_PASS_NO_TX);
		return XDP_PASS;
	}

	/* Pad for a pushed tag and move the IP header's start to match the
	 * egress L2 length first: if that fails, nothing has been changed yet. */
	l2_out = l2_len_out(f);
	pad = dsa_pad(f, &p, end - data, l2_out);
	if (pad && bpf_xdp_adjust_tail(ctx, pad)) {
		pass(st, EBPFW_PASS_L2_REWRITE);
		return XDP_PASS;
	}
	if (l2_out != p.l2_len && bpf_xdp_adjust_head(ctx, (int)p.l2_len - (int)l2_out)) {
		if (pad)
			bpf_xdp_adjust_tail(ctx, -(int)pad);	/* gives back what it took */
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
	account(st, f, &p);
	count(st, EBPFW_CNT_FORWARD);
	return XDP_REDIRECT;
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
 * here (a DSA frame can: tc_untag); and the PPPoE length of a GSO skb would
 * be wrong for its segments.
 */
static __always_inline bool tc_can_rewrite_l2(struct __sk_buff *ctx, const struct pkt *p,
					      const struct ebpfw_flow *f)
{
	if (p->pppoe && !f->l2.pppoe_sid && p->key.v6.dsa_port == EBPFW_NO_DSA_PORT)
		return false;
	if (f->l2.pppoe_sid && ctx->gso_size)
		return false;
	return true;
}

/*
 * A frame from a DSA conduit down to plain Ethernet. Its skb has no IP
 * protocol (ETH_P_XDSA on a real conduit), and bpf_skb_adjust_room only
 * shrinks IP skbs. A second VLAN push makes the kernel insert the first one
 * into the frame and take skb->protocol from it; with the L3 EtherType
 * written behind that tag, popping it leaves an IP skb whose extra L2 bytes
 * (the DSA tag, VLAN tags, PPPoE) adjust_room then removes.
 */
static __always_inline int tc_untag(struct __sk_buff *ctx, const struct pkt *p)
{
	__be16 l3 = bpf_htons(p->l3proto == EBPFW_L3_IPV4 ? ETH_P_IP : ETH_P_IPV6);

	if (bpf_skb_vlan_push(ctx, bpf_htons(ETH_P_8021Q), 0) ||
	    bpf_skb_vlan_push(ctx, bpf_htons(ETH_P_8021Q), 0))
		return -1;
	/* MACs | 8100 0000 | the old L2 from byte 12 on: the inserted tag's inner type */
	if (bpf_skb_store_bytes(ctx, 2 * ETH_ALEN + VLAN_HLEN_, &l3, sizeof(l3),
				BPF_F_RECOMPUTE_CSUM))
		return -1;
	/* the first pop drops the metadata tag and moves the inserted one there,
	 * the second drops that */
	if (bpf_skb_vlan_pop(ctx) || bpf_skb_vlan_pop(ctx))
		return -1;
	return bpf_skb_adjust_room(ctx, -(int)(p->l2_len - ETH_HLEN), BPF_ADJ_ROOM_MAC, 0);
}

/* Strip every VLAN tag (in data or metadata) or a DSA frame's whole L2, then
 * grow to the egress L2 */
static __always_inline int tc_adjust_l2(struct __sk_buff *ctx, const struct pkt *p, __u32 l2_out)
{
	__u32 l2_now = ETH_HLEN + (p->pppoe ? PPPOE_HLEN : 0);

	if (p->key.v6.dsa_port != EBPFW_NO_DSA_PORT) {
		if (l2_out == p->l2_len)
			return 0;	/* re-tag: same length, rewritten in place */
		if (tc_untag(ctx, p))
			return -1;
		l2_now = ETH_HLEN;
	} else {
		for (int i = 0; i < 2; i++)
			if (i < p->vlans && bpf_skb_vlan_pop(ctx))
				return -1;
	}
	if (l2_out > l2_now && bpf_skb_change_head(ctx, l2_out - l2_now, 0))
		return -1;
	return 0;
}

SEC("tc")
int ebpfw_tc(struct __sk_buff *ctx)
{
	struct ebpfw_stats *st = stats();
	struct pkt p;
	struct ebpfw_flow *f = NULL;
	__u32 l2_out, l4_check, csum_flags, l4_diff_addr, l4_diff_port, pad;
	enum dsa_dir dir = rx_dir(ctx->ifindex);
	void *data, *end;
	int ret;

	if (!st)
		return TC_ACT_UNSPEC;
	count(st, EBPFW_CNT_RX);
	if (ctx->data + TC_PULL_LEN > ctx->data_end && ctx->len > ctx->data_end - ctx->data)
		bpf_skb_pull_data(ctx, ctx->len < TC_PULL_LEN ? ctx->len : TC_PULL_LEN);
	data = (void *)(long)ctx->data;
	end = (void *)(long)ctx->data_end;
	pkt_init(&p, ctx->ifindex);

	/* the kernel moves the outer tag of a received frame into metadata; on a
	 * conduit the DSA tag comes first, so none can be there */
	if (ctx->vlan_present) {
		if (dir != DSA_NONE) {
			pass(st, EBPFW_PASS_L2);
			return TC_ACT_UNSPEC;
		}
		p.vlan_tci[0] = ctx->vlan_tci;
		p.key.v6.vlan[0] = ctx->vlan_tci & 0x0fff;
		p.vlan_tpid = ctx->vlan_proto;
		p.vlans = 1;
	}
	if ((ret = parse_packet(data, end, ctx->len, &p, dir))) {
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
	if (!tc_can_rewrite_l2(ctx, &p, f) || !dsa_can_push(f)) {
		pass(st, EBPFW_PASS_L2_REWRITE);
		return TC_ACT_UNSPEC;
	}

	l2_out = l2_len_out(f);
	l4_check = l2_out + (p.l4 - p.l3) + l4_csum_off(&p);
	l4_diff_addr = f->csum_addr;
	l4_diff_port = f->csum_port;
	csum_flags = p.key.v6.l4proto == IPPROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0;
	pad = dsa_pad(f, &p, ctx->len, l2_out);
	if (pad && bpf_skb_change_tail(ctx, ctx->len + pad, 0)) {
		pass(st, EBPFW_PASS_L2_REWRITE);
		return TC_ACT_UNSPEC;
	}
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
	account(st, f, &p);
	count(st, EBPFW_CNT_FORWARD);
	return bpf_redirect(f->oif, 0);
error:
	/* the packet may be half rewritten: it cannot go to the stack */
	count(st, EBPFW_CNT_REWRITE_ERROR);
	return TC_ACT_SHOT;
}

/* -- the proof: what the kernel itself forwards, seen on the egress device ------------------ */

/* The L2 header the kernel wrote, as the parser read it: MACs, VLAN tags (the
 * outer one may be in skb metadata, or inside a DSA tag), PPPoE session, DSA
 * port; -1 if the frame is shorter than that */
static __always_inline int seen_l2(void *data, void *end, const struct pkt *p, __u16 pppoe_sid,
				   __u8 dsa_port, struct ebpfw_l2 *l2)
{
	void *eth = data + (p->eth_off & 0x3f);	/* after a head DSA tag, if any */

	if (eth + ETH_HLEN > end)
		return -1;
	copy_mac(l2->dmac, eth);
	copy_mac(l2->smac, eth + ETH_ALEN);
	l2->vlans = p->vlans;
	l2->vlan_tpid = p->vlans ? p->vlan_tpid : 0;
	l2->vlan_tci[0] = p->vlans > 0 ? p->vlan_tci[0] : 0;
	l2->vlan_tci[1] = p->vlans > 1 ? p->vlan_tci[1] : 0;
	l2->pppoe_sid = pppoe_sid;
	l2->dsa_port = dsa_port;
	return 0;
}

/* The kernel writes one of the router's own addresses on what it routes */
static __always_inline bool own_mac(const __u8 *smac)
{
	struct ebpfw_mac key;

	__builtin_memcpy(key.addr, smac, sizeof(key.addr));
	return bpf_map_lookup_elem(&ebpfw_macs, &key) != NULL;
}

static __always_inline bool same_l2(const struct ebpfw_l2 *a, const struct ebpfw_l2 *b)
{
	const __u16 *x = (const __u16 *)a, *y = (const __u16 *)b;

	for (int i = 0; i < sizeof(*a) / 2; i++)
		if (x[i] != y[i])
			return false;
	return true;
}

/*
 * On the egress of every device the fast path sends to: a packet the kernel
 * forwarded, of a flow waiting for proof or of an old generation, proves that
 * the ruleset, routing and NAT of now let it through, here, with this L2
 * header. An old generation's flow leaving as before is proved again in
 * place; anything else is written into the flow and reported to the daemon.
 * Nothing proving: one lookup and one branch per packet.
 */
SEC("tc")
int ebpfw_egress(struct __sk_buff *ctx)
{
	struct ebpfw_stats *st = stats();
	struct ebpfw_l2 seen __attribute__((aligned(8)));
	union ebpfw_key *in;
	struct ebpfw_flow *f;
	struct pkt p;
	void *data, *end;
	__u16 sid;
	__u8 port;

	if (!st)
		return TC_ACT_UNSPEC;
	clock_tick(st);
	if (!st->proving || !ctx->ingress_ifindex)	/* the router's own packets prove nothing */
		return TC_ACT_UNSPEC;
	if (ctx->data + TC_PULL_LEN > ctx->data_end && ctx->len > ctx->data_end - ctx->data)
		bpf_skb_pull_data(ctx, ctx->len < TC_PULL_LEN ? ctx->len : TC_PULL_LEN);
	data = (void *)(long)ctx->data;
	end = (void *)(long)ctx->data_end;
	pkt_init(&p, 0);
	if (ctx->vlan_present) {	/* the outer tag, the kernel put in metadata */
		p.vlans = 1;
		p.vlan_tci[0] = ctx->vlan_tci;
		p.vlan_tpid = ctx->vlan_proto;
	}
	if (parse_packet(data, end, ctx->len, &p, tx_dir(ctx->ifindex)) ||
	    (p.tcp_flags & (TCPF_FIN_ | TCPF_RST_)))
		return TC_ACT_UNSPEC;
	/* the tuple it leaves with, in a key without device fields */
	sid = p.key.v6.pppoe_sid;
	port = p.key.v6.dsa_port;
	p.key.v6.vlan[0] = 0;
	p.key.v6.vlan[1] = 0;
	p.key.v6.pppoe_sid = 0;
	p.key.v6.dsa_port = 0;
	if (p.l3proto == EBPFW_L3_IPV4) {
		in = bpf_map_lookup_elem(&ebpfw_egress4, &p.key.v4);
		KEEP_APART(in);
		f = in ? bpf_map_lookup_elem(&ebpfw_flows4, &in->v4) : NULL;
	} else {
		in = bpf_map_lookup_elem(&ebpfw_egress6, &p.key.v6);
		f = in ? bpf_map_lookup_elem(&ebpfw_flows6, &in->v6) : NULL;
	}
	if (!f)
		return TC_ACT_UNSPEC;
	if (f->state == EBPFW_FORWARD && f->gen == st->gen)
		return TC_ACT_UNSPEC;
	if (f->state != EBPFW_FORWARD && f->state != EBPFW_PROVING)
		return TC_ACT_UNSPEC;
	/* reported, not answered: the daemon has yet to check the new egress (its MTU, its
	 * hook), so a frame like the reported one does not make it hold in place either */
	if (f->flags & EBPFW_F_REPORTED)
		return TC_ACT_UNSPEC;
	if (seen_l2(data, end, &p, sid, port, &seen))
		return TC_ACT_UNSPEC;
	if (!own_mac(seen.smac)) {
		count(st, EBPFW_CNT_NOT_OURS);
		return TC_ACT_UNSPEC;
	}
	if (f->state == EBPFW_FORWARD && f->oif == ctx->ifindex && same_l2(&f->l2, &seen)) {
		f->gen = st->gen;
		count(st, EBPFW_CNT_REPROVED);
		return TC_ACT_UNSPEC;
	}
	f->l2 = seen;
	f->oif = ctx->ifindex;
	f->proof_gen = st->gen;
	f->flags |= EBPFW_F_REPORTED;
	notify_key(st, p.l3proto, in, EBPFW_EV_PROVED, 0);
	count(st, EBPFW_CNT_PROVED);
	return TC_ACT_UNSPEC;
}

char _license[] SEC("license") = "GPL";

/* Never called: puts the ring buffer record in BTF, where tests/test_abi.py checks it */
__attribute__((noinline, used)) int ebpfw_btf_event(struct ebpfw_event *ev)
{
	return ev ? ev->type : 0;
}
