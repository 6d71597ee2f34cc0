// SPDX-License-Identifier: GPL-2.0-only
/*
 * A PPPoE session on a veth wire, for a kernel without PPP (tests only).
 *
 * Stands in for the pppoe driver: an Ethernet device "below" (the wire) and a
 * NOARP veth "above" (where the stack routes, like pppoe-wan; its peer is only
 * a door back in). pppoe_encap, on the upper device's TC egress, puts the
 * stack's IP packet in a PPPoE session frame and redirects it to the lower
 * device's egress, as pppoe_xmit hands it to dev_queue_xmit: everything on the
 * lower device (ebpfw's egress program included) sees the real frame. The
 * packet keeps the skb it was forwarded in, so its ingress device is kept.
 * pppoe_decap, on the lower device's TC ingress (after ebpfw's filter), takes
 * session frames of our session off the wire: TC cannot shorten a non-IP skb,
 * so the 8 PPPoE bytes are rewritten into two VLAN 0 (priority) tags, which
 * the receive path strips, and the frame is sent through the door to arrive
 * on the upper device, as pppoe_rcv hands it to the ppp device.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#define ETH_P_PPP_SES_	0x8864
#define PPP_IP		0x0021
#define PPP_IPV6	0x0057
#define PPPOE_LEN	8	/* session header 6 + PPP protocol 2 */

struct pppoe_wire {
	__u32 lower;		/* the wire: frames leave and arrive here */
	__u32 door;		/* peer of the upper device: sending here arrives on upper */
	__u16 sid;		/* session id, host order */
	__u8 peer_mac[6];	/* the other end of the session */
	__u8 lower_mac[6];
	__u8 upper_mac[6];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct pppoe_wire);
} pppoe_wire SEC(".maps");

struct pppoe_frame {
	__u8 dst[6];
	__u8 src[6];
	__be16 proto;
	__u8 ver_type;
	__u8 code;
	__be16 sid;
	__be16 length;
	__be16 ppp_proto;
} __attribute__((packed));

static __always_inline struct pppoe_wire *wire(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&pppoe_wire, &zero);
}

SEC("tc")
int pppoe_encap(struct __sk_buff *skb)
{
	struct pppoe_wire *w = wire();
	struct pppoe_frame *f;
	void *data, *end;
	__be16 ppp;

	if (!w)
		return TC_ACT_SHOT;
	if (skb->protocol == bpf_htons(ETH_P_IP))
		ppp = bpf_htons(PPP_IP);
	else if (skb->protocol == bpf_htons(ETH_P_IPV6))
		ppp = bpf_htons(PPP_IPV6);
	else
		return TC_ACT_SHOT;	/* nothing but IP goes over this link */
	if (bpf_skb_adjust_room(skb, PPPOE_LEN, BPF_ADJ_ROOM_MAC, 0))
		return TC_ACT_SHOT;
	data = (void *)(long)skb->data;
	end = (void *)(long)skb->data_end;
	f = data;
	if ((void *)(f + 1) > end)
		return TC_ACT_SHOT;
	__builtin_memcpy(f->dst, w->peer_mac, 6);
	__builtin_memcpy(f->src, w->lower_mac, 6);
	f->proto = bpf_htons(ETH_P_PPP_SES_);
	f->ver_type = 0x11;
	f->code = 0;
	f->sid = bpf_htons(w->sid);
	f->length = bpf_htons(skb->len - ETH_HLEN - 6);
	f->ppp_proto = ppp;
	return bpf_redirect(w->lower, 0);
}

SEC("tc")
int pppoe_decap(struct __sk_buff *skb)
{
	struct pppoe_wire *w = wire();
	struct pppoe_frame *f;
	void *data, *end;
	__be16 l3;

	if (!w)
		return TC_ACT_OK;
	if (bpf_skb_pull_data(skb, sizeof(*f)))
		return TC_ACT_OK;
	data = (void *)(long)skb->data;
	end = (void *)(long)skb->data_end;
	f = data;
	if ((void *)(f + 1) > end || f->proto != bpf_htons(ETH_P_PPP_SES_))
		return TC_ACT_OK;
	if (f->ver_type != 0x11 || f->code != 0 || f->sid != bpf_htons(w->sid))
		return TC_ACT_SHOT;	/* discovery or another session: no one here for it */
	if (f->ppp_proto == bpf_htons(PPP_IP))
		l3 = bpf_htons(ETH_P_IP);
	else if (f->ppp_proto == bpf_htons(PPP_IPV6))
		l3 = bpf_htons(ETH_P_IPV6);
	else
		return TC_ACT_SHOT;	/* LCP, IPCP, ...: not simulated */
	/* 8864 | 11 00 sid len | ppp  ->  8100 0000 | 8100 0000 | l3 */
	__builtin_memcpy(f->dst, w->upper_mac, 6);
	f->proto = bpf_htons(ETH_P_8021Q);
	f->ver_type = 0;
	f->code = 0;
	f->sid = bpf_htons(ETH_P_8021Q);
	f->length = 0;
	f->ppp_proto = l3;
	return bpf_redirect(w->door, 0);
}

char _license[] SEC("license") = "GPL";
