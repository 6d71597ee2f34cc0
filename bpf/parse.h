/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * One parse step per header. Each step bounds-checks against the end of the
 * packet, fills struct pkt and returns 0 or the EBPFW_PASS_* reason that
 * sends the packet to the stack.
 */
#ifndef __EBPFW_PARSE_H
#define __EBPFW_PARSE_H

#include <stdbool.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include "ebpfw/abi.h"

#define ETH_P_PPP_SES_	0x8864
#define PPP_IP_		0x0021
#define PPP_IPV6_	0x0057
#define PPPOE_HLEN	8	/* PPPoE session header + PPP protocol */
#define VLAN_HLEN_	4
#define DSA_MAX_LEN	8	/* longest head or after-source-MAC tag of any protocol */
#define L2_MAX_LEN	(DSA_MAX_LEN + ETH_HLEN + 2 * VLAN_HLEN_ + PPPOE_HLEN)

#define TCPF_FIN_	0x01
#define TCPF_SYN_	0x02
#define TCPF_RST_	0x04

/* struct ethhdr is packed, which makes the compiler read h_proto a byte at a
 * time; frames start 2-byte aligned, so this one is not */
struct eth_hdr_ {
	__u8 h_dest[ETH_ALEN];
	__u8 h_source[ETH_ALEN];
	__be16 h_proto;
};

struct vlan_hdr_ {
	__be16 tci;
	__be16 proto;
};

struct pppoe_hdr_ {
	__u8 ver_type;
	__u8 code;
	__be16 sid;
	__be16 length;		/* PPP payload incl. the protocol field */
	__be16 ppp_proto;
};

struct cursor {
	void *pos;
	void *end;	/* end of the linear data: every header must be before it */
	void *start;
	__u32 len;	/* whole packet; an skb keeps its payload in fragments past end */
};

/* Whether the packet holds len bytes from the cursor on (linear or not) */
static __always_inline int cursor_has(const struct cursor *c, __u32 len)
{
	return (__u32)(c->pos - c->start) + len <= c->len;
}

/* Which DSA tag format a frame carries: none (not a conduit), switch -> CPU
 * (received on a conduit) or CPU -> switch (sent by the kernel to a conduit) */
enum dsa_dir {
	DSA_NONE,
	DSA_RX,
	DSA_TX,
};

/* What the parser learned about one packet */
struct pkt {
	union ebpfw_key key;	/* head fields through key.v6, addresses per family;
				 * key.dsa_port: RX the source, TX the destination port */
	void *l3;		/* IPv4 / IPv6 header */
	void *l4;		/* TCP / UDP header */
	__u16 l2_len;		/* L2 bytes in the packet data before l3 */
	__u16 l3_len;		/* IPv4 tot_len or IPv6 40 + payload_len */
	__u16 pppoe_len;	/* PPPoE length field */
	__u8 l3proto;		/* EBPFW_L3_* */
	__u8 vlans;		/* tags in key vlan[] (in data or in skb metadata) */
	__u8 data_vlans;	/* of those, tags in the packet data */
	__u8 pppoe;		/* PPPoE session header present */
	__u8 tcp_flags;
	__u8 l4_hlen;		/* TCP header with options, or UDP */
	__u8 ttl;
	__be16 vlan_tpid;	/* protocol of the outer VLAN tag (vlans > 0) */
	__u16 vlan_tci[2];	/* the tags' TCIs, priority bits included, [0] outer */
	__u16 eth_off;		/* where the Ethernet header starts (after a head DSA tag) */
};

/* What the parser starts from; it writes every other field it reads (the
 * key's addresses and ports, for one, need no zeroing) */
static __always_inline void pkt_init(struct pkt *p, __u32 ifindex)
{
	p->key.v6.ifindex = ifindex;
	p->key.v6.vlan[0] = 0;
	p->key.v6.vlan[1] = 0;
	p->key.v6.pppoe_sid = 0;
	p->key.v6.dsa_port = EBPFW_NO_DSA_PORT;
	p->vlans = 0;
	p->data_vlans = 0;
	p->pppoe = 0;
	p->tcp_flags = 0;
}

static __always_inline int parse_eth(struct cursor *c, struct pkt *p, __be16 *proto)
{
	struct eth_hdr_ *eth = c->pos;

	if ((void *)(eth + 1) > c->end)
		return EBPFW_PASS_TRUNCATED;
	p->eth_off = c->pos - c->start;
	/* group bit: broadcast and multicast never have a routed flow */
	if (eth->h_dest[0] & 1)
		return EBPFW_PASS_MULTICAST;
	*proto = eth->h_proto;
	c->pos = eth + 1;
	return 0;
}

static __always_inline int is_vlan_proto(__be16 proto)
{
	return proto == bpf_htons(ETH_P_8021Q) || proto == bpf_htons(ETH_P_8021AD);
}

/* 802.1ad or 802.1Q outer, 802.1Q inner; a third tag goes to the stack */
static __always_inline int parse_vlan(struct cursor *c, struct pkt *p, __be16 *proto)
{
	struct vlan_hdr_ *vh = c->pos;

	if (!is_vlan_proto(*proto))
		return 0;
	if (p->vlans >= 2 || (p->vlans == 1 && *proto != bpf_htons(ETH_P_8021Q)))
		return EBPFW_PASS_L2;
	if ((void *)(vh + 1) > c->end)
		return EBPFW_PASS_TRUNCATED;
	/* a branch, not vlan[p->vlans]: an indexed stack address is one the
	 * compiler may build with an OR, which the verifier refuses */
	if (p->vlans) {
		p->vlan_tci[1] = bpf_ntohs(vh->tci);
		p->key.v6.vlan[1] = p->vlan_tci[1] & 0x0fff;
	} else {
		p->vlan_tci[0] = bpf_ntohs(vh->tci);
		p->key.v6.vlan[0] = p->vlan_tci[0] & 0x0fff;
		p->vlan_tpid = *proto;
	}
	p->vlans++;
	p->data_vlans++;
	*proto = vh->proto;
	c->pos = vh + 1;
	return 0;
}

static __always_inline int parse_pppoe(struct cursor *c, struct pkt *p, __be16 *proto)
{
	struct pppoe_hdr_ *ph = c->pos;

	if (*proto != bpf_htons(ETH_P_PPP_SES_))
		return 0;
	if ((void *)(ph + 1) > c->end)
		return EBPFW_PASS_TRUNCATED;
	if (ph->ver_type != 0x11 || ph->code != 0)
		return EBPFW_PASS_L2;
	if (ph->ppp_proto == bpf_htons(PPP_IP_))
		*proto = bpf_htons(ETH_P_IP);
	else if (ph->ppp_proto == bpf_htons(PPP_IPV6_))
		*proto = bpf_htons(ETH_P_IPV6);
	else
		return EBPFW_PASS_NOT_IP;	/* LCP, IPCP, ... */
	p->key.v6.pppoe_sid = bpf_ntohs(ph->sid);
	p->pppoe_len = bpf_ntohs(ph->length);
	p->pppoe = 1;
	c->pos = ph + 1;
	return 0;
}

static __always_inline int parse_ipv4(struct cursor *c, struct pkt *p)
{
	struct iphdr *ip = c->pos;

	if ((void *)(ip + 1) > c->end)
		return EBPFW_PASS_TRUNCATED;
	/* version 4, no options: one test on the hot path. Bytes, not the
	 * bitfields: their order comes from the host's asm headers */
	if (*(__u8 *)ip != 0x45)
		return *(__u8 *)ip >> 4 != 4 ? EBPFW_PASS_NOT_IP : EBPFW_PASS_IP_OPTIONS;
	if (ip->frag_off & bpf_htons(0x3fff))	/* MF or an offset */
		return EBPFW_PASS_FRAGMENT;
	if (ip->protocol != IPPROTO_TCP && ip->protocol != IPPROTO_UDP)
		return EBPFW_PASS_L4_PROTO;
	p->l3_len = bpf_ntohs(ip->tot_len);
	if (p->l3_len < sizeof(*ip) || !cursor_has(c, p->l3_len))
		return EBPFW_PASS_TRUNCATED;
	p->l3proto = EBPFW_L3_IPV4;
	p->key.v6.l4proto = ip->protocol;
	p->key.v4.saddr = ip->saddr;
	p->key.v4.daddr = ip->daddr;
	p->ttl = ip->ttl;
	p->l3 = ip;
	c->pos = ip + 1;
	return 0;
}

static __always_inline int is_ipv6_ext(__u8 nexthdr)
{
	switch (nexthdr) {
	case IPPROTO_HOPOPTS:
	case IPPROTO_ROUTING:
	case IPPROTO_FRAGMENT:
	case IPPROTO_DSTOPTS:
	case IPPROTO_AH:
	case IPPROTO_MH:
	case 139:	/* HIP */
	case 140:	/* shim6 */
		return 1;
	}
	return 0;
}

static __always_inline int parse_ipv6(struct cursor *c, struct pkt *p)
{
	struct ipv6hdr *ip6 = c->pos;
	__u32 l3_len;

	if ((void *)(ip6 + 1) > c->end)
		return EBPFW_PASS_TRUNCATED;
	if (*(__u8 *)ip6 >> 4 != 6)
		return EBPFW_PASS_NOT_IP;
	if (ip6->nexthdr != IPPROTO_TCP && ip6->nexthdr != IPPROTO_UDP)
		return is_ipv6_ext(ip6->nexthdr) ? EBPFW_PASS_IPV6_EXT : EBPFW_PASS_L4_PROTO;
	/* 32 bits: 40 + 65535 would wrap in l3_len and pass for a short packet */
	l3_len = sizeof(*ip6) + bpf_ntohs(ip6->payload_len);
	if (l3_len == sizeof(*ip6) || l3_len > 0xffff || !cursor_has(c, l3_len))
		return EBPFW_PASS_TRUNCATED;	/* jumbogram or cut short */
	p->l3_len = l3_len;
	p->l3proto = EBPFW_L3_IPV6;
	p->key.v6.l4proto = ip6->nexthdr;
	__builtin_memcpy(p->key.v6.saddr, &ip6->saddr, sizeof(p->key.v6.saddr));
	__builtin_memcpy(p->key.v6.daddr, &ip6->daddr, sizeof(p->key.v6.daddr));
	p->ttl = ip6->hop_limit;
	p->l3 = ip6;
	c->pos = ip6 + 1;
	return 0;
}

/*
 * The L4 header must lie within the IP payload, not only within the frame:
 * conntrack calls anything else invalid, and the rewrite would touch bytes
 * past the packet.
 */
static __always_inline int parse_l4(struct cursor *c, struct pkt *p)
{
	__u32 payload = p->l3_len - (p->l3proto == EBPFW_L3_IPV4 ? sizeof(struct iphdr)
								 : sizeof(struct ipv6hdr));

	if (p->key.v6.l4proto == IPPROTO_TCP) {
		struct tcphdr *th = c->pos;
		__u32 hlen;

		if ((void *)(th + 1) > c->end)
			return EBPFW_PASS_TRUNCATED;
		hlen = (((__u8 *)th)[12] >> 4) * 4;	/* data offset, not the bitfield */
		if (hlen < sizeof(*th) || hlen > payload)
			return EBPFW_PASS_TRUNCATED;
		p->tcp_flags = ((__u8 *)th)[13];
		p->key.v6.sport = th->source;
		p->key.v6.dport = th->dest;
		p->l4_hlen = hlen;
		p->l4 = th;
	} else {
		struct udphdr *uh = c->pos;
		__u32 ulen;

		if ((void *)(uh + 1) > c->end)
			return EBPFW_PASS_TRUNCATED;
		ulen = bpf_ntohs(uh->len);
		if (ulen < sizeof(*uh) || ulen > payload)
			return EBPFW_PASS_TRUNCATED;
		p->key.v6.sport = uh->source;
		p->key.v6.dport = uh->dest;
		p->l4_hlen = sizeof(*uh);
		p->l4 = uh;
	}
	return 0;
}

#ifdef EBPFW_DSA_TAG
/* The tag's own steps, rendered from bpf/dsa/tag.h.j2 (make bpf names it) */
#include EBPFW_DSA_TAG

/*
 * A plain Ethernet IPv4, IPv6 or ARP header at the frame's start (18 bytes
 * in bounds): on a conduit, a frame whose tag the MAC took off in hardware
 * (MediaTek SoCs can, handing the port over out of band).
 */
static __always_inline bool dsa_untagged(const __u8 *eth)
{
	__u16 type = (__u16)eth[12] << 8 | eth[13];

	if (type == ETH_P_IP)
		return eth[14] >> 4 == 4;
	if (type == ETH_P_IPV6)
		return eth[14] >> 4 == 6;
	return type == ETH_P_ARP && eth[14] == 0 && eth[15] == 1 && eth[16] == 8 && eth[17] == 0;
}

/*
 * The tag in the format dir says: at the frame's start (head tags) or where
 * the EtherType would be (c->pos just past it, after parse_eth). The port goes
 * to key.dsa_port; a VLAN tag the tag stands in for to the VLAN fields.
 */
static __always_inline int parse_dsa(struct cursor *c, struct pkt *p, __be16 *proto,
				     enum dsa_dir dir)
{
	__u32 len = dir == DSA_RX ? DSA_RX_LEN : DSA_TX_LEN;
	__u8 *t;
	int port;

#ifdef DSA_TAG_HEAD
	t = c->pos;
	if ((void *)t + len + ETH_HLEN > c->end)
		return EBPFW_PASS_TRUNCATED;
#else
	t = c->pos - 2;
	if ((void *)t + len + 2 > c->end)
		return EBPFW_PASS_TRUNCATED;
#endif
	if (dir == DSA_RX && c->start + 18 <= c->end && dsa_untagged(c->start))
		return EBPFW_PASS_DSA_UNTAGGED;
	port = dir == DSA_RX ? dsa_rx_port(t, p) : dsa_tx_port(t, p);
	if (port < 0)
		return EBPFW_PASS_DSA_TAG;
	p->key.v6.dsa_port = port;
#ifdef DSA_TAG_HEAD
	c->pos = t + len;
#else
	*proto = *(__be16 *)(t + len);
	c->pos = t + len + 2;
#endif
	return 0;
}
#endif /* EBPFW_DSA_TAG */

/*
 * [DSA tag,] Ethernet, up to two VLAN tags, PPPoE, IPv4 / IPv6, TCP / UDP.
 * Tags that the kernel already moved into skb metadata are in p->vlans on
 * entry. len is the whole packet from data on, linear or not. dir: the DSA
 * tag format on this device; an object without tag code has no tag step.
 */
static __always_inline int parse_packet(void *data, void *end, __u32 len, struct pkt *p,
					enum dsa_dir dir)
{
	struct cursor c = { .pos = data, .end = end, .start = data, .len = len };
	__be16 proto;
	int ret;

#if defined(EBPFW_DSA_TAG) && defined(DSA_TAG_HEAD)
	if (dir != DSA_NONE && (ret = parse_dsa(&c, p, &proto, dir)))
		return ret;
#elif defined(EBPFW_DSA_TAG) && defined(DSA_TAG_TAIL)
	if (dir != DSA_NONE)	/* tail tags are not parsed (yet): the stack keeps them */
		return EBPFW_PASS_DSA_TAG;
#endif
	if ((ret = parse_eth(&c, p, &proto)))
		return ret;
#if defined(EBPFW_DSA_TAG) && defined(DSA_TAG_AFTER_SA)
	if (dir != DSA_NONE && (ret = parse_dsa(&c, p, &proto, dir)))
		return ret;
#endif
	if ((ret = parse_vlan(&c, p, &proto)))
		return ret;
	if ((ret = parse_vlan(&c, p, &proto)))
		return ret;
	if (is_vlan_proto(proto))
		return EBPFW_PASS_L2;
	if ((ret = parse_pppoe(&c, p, &proto)))
		return ret;
	p->l2_len = c.pos - data;
	if (proto == bpf_htons(ETH_P_IP))
		ret = parse_ipv4(&c, p);
	else if (proto == bpf_htons(ETH_P_IPV6))
		ret = parse_ipv6(&c, p);
	else
		ret = EBPFW_PASS_NOT_IP;
	if (ret)
		return ret;
	if (p->pppoe && p->pppoe_len != p->l3_len + 2)
		return EBPFW_PASS_L2;
	return parse_l4(&c, p);
}

#endif /* __EBPFW_PARSE_H */
