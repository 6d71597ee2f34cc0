/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * Rewrite steps of a forwarded packet: L2 header, NAT, TTL / hop limit and
 * checksums. Checksum arithmetic works on raw packet words, which is byte
 * order neutral; the daemon stores its diffs in network order to match.
 */
#ifndef __EBPFW_REWRITE_H
#define __EBPFW_REWRITE_H

#include "parse.h"

static __always_inline __u16 csum_fold(__u32 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)sum;
}

/* RFC 1624 eqn. 3: HC' = ~(~HC + m'), with m' a folded ones' complement diff */
static __always_inline __u16 csum_apply(__u16 check, __u32 diff)
{
	return ~csum_fold((__u16)~check + diff);
}

static __always_inline __u32 csum_diff16(__u16 from, __u16 to)
{
	return (__u16)~from + (__u32)to;
}

#if defined(EBPFW_DSA_TAG) && !defined(DSA_TAG_TAIL)
#define DSA_IN_FRONT	1	/* a pushed tag is part of the L2 header in front of L3 */
#endif

/* Bytes a pushed DSA tag adds in front of the IP header */
static __always_inline __u32 dsa_push_len(const struct ebpfw_flow *f)
{
#ifdef DSA_IN_FRONT
	if (f->l2.dsa_port != EBPFW_NO_DSA_PORT)
		return dsa_vlan_inside(f) ? DSA_TX_LEN - VLAN_HLEN_ : DSA_TX_LEN;
#endif
	return 0;
}

/* Bytes of L2 header the flow's egress needs in front of the IP header */
static __always_inline __u32 l2_len_out(const struct ebpfw_flow *f)
{
	__u32 len = ETH_HLEN + (f->l2.vlans > 2 ? 2 : f->l2.vlans) * VLAN_HLEN_ + dsa_push_len(f);

	return f->l2.pppoe_sid ? len + PPPOE_HLEN : len;
}

/*
 * Whether this object can write the flow's egress tag: a flow into a DSA
 * conduit needs the tag code of the conduit's protocol (the daemon only asks
 * an object of that protocol, this is the fast path's own check).
 */
static __always_inline bool dsa_can_push(const struct ebpfw_flow *f)
{
	if (f->l2.dsa_port == EBPFW_NO_DSA_PORT)
		return true;
#ifdef DSA_IN_FRONT
	return dsa_port_ok(f);
#else
	return false;	/* no tag code, or a tail tag (not written yet) */
#endif
}

/* Both ends 2-byte aligned (the frame, the flow value): three stores, not six */
static __always_inline void copy_mac(void *dst, const __u8 *src)
{
	__u16 *d = dst;
	const __u16 *s = (const __u16 *)src;

	d[0] = s[0];
	d[1] = s[1];
	d[2] = s[2];
}

/* Writes the egress L2 header; data .. data + l2_len_out(f) is in bounds */
static __always_inline int write_l2(void *data, void *end, const struct ebpfw_flow *f,
				    const struct pkt *p)
{
	__u8 *eth = data;
	__be16 *w;
	bool outer_in_tag = false;	/* the DSA tag carries the outer VLAN tag */

	if (data + L2_MAX_LEN > end)
		return -1;
#if defined(EBPFW_DSA_TAG) && defined(DSA_TAG_HEAD)
	if (f->l2.dsa_port != EBPFW_NO_DSA_PORT) {
		dsa_push(data, f);
		eth += DSA_TX_LEN;
	}
#endif
	copy_mac(eth, f->l2.dmac);
	copy_mac(eth + ETH_ALEN, f->l2.smac);
	w = (__be16 *)(eth + 2 * ETH_ALEN);
#if defined(EBPFW_DSA_TAG) && defined(DSA_TAG_AFTER_SA)
	if (f->l2.dsa_port != EBPFW_NO_DSA_PORT) {
		dsa_push((__u8 *)w, f);
		w += DSA_TX_LEN / 2;
		outer_in_tag = dsa_vlan_inside(f);
	}
#endif
	if (f->l2.vlans >= 1 && !outer_in_tag) {
		w[0] = f->l2.vlan_tpid;
		w[1] = bpf_htons(f->l2.vlan_tci[0]);
		w += 2;
	}
	if (f->l2.vlans >= 2) {
		w[0] = bpf_htons(ETH_P_8021Q);
		w[1] = bpf_htons(f->l2.vlan_tci[1]);
		w += 2;
	}
	if (f->l2.pppoe_sid) {
		w[0] = bpf_htons(ETH_P_PPP_SES_);
		w[1] = bpf_htons(0x1100);	/* version 1, type 1, code 0 */
		w[2] = bpf_htons(f->l2.pppoe_sid);
		w[3] = bpf_htons(p->l3_len + 2);
		w[4] = bpf_htons(p->l3proto == EBPFW_L3_IPV4 ? PPP_IP_ : PPP_IPV6_);
	} else {
		w[0] = bpf_htons(p->l3proto == EBPFW_L3_IPV4 ? ETH_P_IP : ETH_P_IPV6);
	}
	return 0;
}

/* Offset of the L4 checksum field from the L4 header */
static __always_inline __u32 l4_csum_off(const struct pkt *p)
{
	return p->key.v6.l4proto == IPPROTO_TCP ? offsetof(struct tcphdr, check)
					     : offsetof(struct udphdr, check);
}

/*
 * NAT and TTL on the L3 / L4 headers at l3 (in bounds for the IP header and
 * the first 8 bytes of L4, checked by the caller). The L4 checksum is only
 * fixed when fix_l4 is set; TC leaves it to bpf_l4_csum_replace, which also
 * knows about partial and complete skb checksums.
 */
static __always_inline int rewrite_l3l4(void *l3, void *end, const struct ebpfw_flow *f,
					const struct pkt *p, int fix_l4)
{
	__u32 l4_diff = (__u32)f->csum_addr + f->csum_port;
	__be16 *ports, *l4_check;

	if (p->l3proto == EBPFW_L3_IPV4) {
		struct iphdr *ip = l3;
		__u16 ttl_old, ttl_new;

		if ((void *)(ip + 1) + 8 > end)
			return -1;
		ttl_old = *(__u16 *)&ip->ttl;
		ip->ttl--;
		ttl_new = *(__u16 *)&ip->ttl;
		if (f->flags & EBPFW_F_NAT) {
			ip->saddr = f->nat_saddr[0];
			ip->daddr = f->nat_daddr[0];
		}
		ip->check = csum_apply(ip->check, csum_diff16(ttl_old, ttl_new) +
						  (f->flags & EBPFW_F_NAT ? f->csum_addr : 0));
		ports = (void *)(ip + 1);
	} else {
		struct ipv6hdr *ip6 = l3;

		if ((void *)(ip6 + 1) + 8 > end)
			return -1;
		ip6->hop_limit--;
		if (f->flags & EBPFW_F_NAT) {
			__builtin_memcpy(&ip6->saddr, f->nat_saddr, sizeof(ip6->saddr));
			__builtin_memcpy(&ip6->daddr, f->nat_daddr, sizeof(ip6->daddr));
		}
		ports = (void *)(ip6 + 1);
	}
	if (!(f->flags & EBPFW_F_NAT))
		return 0;
	ports[0] = f->nat_sport;
	ports[1] = f->nat_dport;
	if (!fix_l4)
		return 0;
	if (p->key.v6.l4proto == IPPROTO_TCP) {
		struct tcphdr *th = (void *)ports;

		if ((void *)(th + 1) > end)
			return -1;
		th->check = csum_apply(th->check, l4_diff);
		return 0;
	}
	l4_check = &((struct udphdr *)ports)->check;
	if (*l4_check == 0)	/* IPv4 UDP without checksum stays without */
		return 0;
	*l4_check = csum_apply(*l4_check, l4_diff) ?: 0xffff;
	return 0;
}

#endif /* __EBPFW_REWRITE_H */
