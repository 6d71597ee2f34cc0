// SPDX-License-Identifier: GPL-2.0-only
/*
 * A DSA switch with the MediaTek tag on veth wires, for a kernel without DSA
 * (tests only). One object serves both ends of the conduit's wire:
 *
 * Router side (stands in for the DSA driver): user ports are NOARP-free veths
 * (lan1, wan) whose peers are only doors back in. tag_out, on a user port's TC
 * egress, puts the tag for its port on the stack's frame and redirects it to
 * the conduit's egress, as dsa_user_xmit hands it to the conduit: everything on
 * the conduit (ebpfw's egress program included) sees the real tagged frame.
 * untag_in, on the conduit's TC ingress (after ebpfw's filter), reads the port
 * from the tag and sends the frame through that port's door, so it arrives on
 * the user port as dsa_switch_rcv delivers it.
 *
 * Switch side (stands in for the switch chip): the same two programs with the
 * other tag format: untag_in on the conduit's peer takes CPU frames (TX tags)
 * out of the port they name, tag_out on each port's ingress tags the frames
 * of the hosts behind it (RX tags) towards the CPU.
 *
 * TC cannot shorten a non-IP skb, so a tag taken off is rewritten into a
 * VLAN 0 (priority) tag, which the receive path strips.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#define MTK_LEN		4
#define PORTS		8

struct dsa_wire {
	__u32 conduit;		/* where tagged frames leave: the conduit or its peer */
	__u32 tx_format;	/* 1: tags written here are CPU -> switch (router side) */
	__u32 out[PORTS];	/* port -> device a frame for it is sent through */
	__u64 tagged;		/* frames tag_out tagged */
	__u64 untagged;		/* frames untag_in delivered */
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct dsa_wire);
} dsa_wire SEC(".maps");

/* ifindex of a port device -> its port number */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, PORTS);
	__type(key, __u32);
	__type(value, __u32);
} dsa_ports SEC(".maps");

static __always_inline struct dsa_wire *wire(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&dsa_wire, &zero);
}

SEC("tc")
int tag_out(struct __sk_buff *skb)
{
	struct dsa_wire *w = wire();
	__u32 ifindex = skb->ifindex;
	__u32 *port = bpf_map_lookup_elem(&dsa_ports, &ifindex);
	__u8 head[2 * ETH_ALEN + MTK_LEN];

	if (!w || !port || *port >= PORTS)
		return TC_ACT_SHOT;
	/* room in front, the MACs moved there, the tag where they were */
	if (bpf_skb_change_head(skb, MTK_LEN, 0) ||
	    bpf_skb_load_bytes(skb, MTK_LEN, head, 2 * ETH_ALEN))
		return TC_ACT_SHOT;
	head[12] = 0;
	head[13] = w->tx_format ? 1 << *port : *port;	/* TX: BIT(port); RX: port */
	head[14] = 0;
	head[15] = 0;
	if (bpf_skb_store_bytes(skb, 0, head, sizeof(head), 0))
		return TC_ACT_SHOT;
	__sync_fetch_and_add(&w->tagged, 1);
	return bpf_redirect(w->conduit, 0);
}

SEC("tc")
int untag_in(struct __sk_buff *skb)
{
	struct dsa_wire *w = wire();
	__u8 tag[MTK_LEN];
	__u32 port = PORTS, dev;
	__be16 vlan0[2] = { bpf_htons(ETH_P_8021Q), 0 };

	if (!w || bpf_skb_load_bytes(skb, 2 * ETH_ALEN, tag, sizeof(tag)))
		return TC_ACT_SHOT;
	if (!w->tx_format) {		/* the switch side reads what the CPU wrote */
		for (int i = 0; i < PORTS; i++)
			if (tag[1] == 1 << i)
				port = i;
	} else {
		port = tag[1] & 7;
	}
	if (tag[0] || port >= PORTS)
		return TC_ACT_SHOT;	/* no such port on this switch */
	dev = w->out[port];
	if (!dev)
		return TC_ACT_SHOT;
	if (bpf_skb_store_bytes(skb, 2 * ETH_ALEN, vlan0, sizeof(vlan0), 0))
		return TC_ACT_SHOT;
	__sync_fetch_and_add(&w->untagged, 1);
	return bpf_redirect(dev, 0);
}

char _license[] SEC("license") = "GPL";
