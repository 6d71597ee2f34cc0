/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * The kernel/user contract of ebpfw: every map key and value, every flag and
 * every constant that crosses between the BPF fast path and the daemon.
 * src/fw_ebpf/maps.py mirrors this file; tests/test_abi.py checks the mirror
 * against the BTF of the compiled objects.
 *
 * Flow tables, one pair per address family:
 *   ebpfw_flows4 / ebpfw_flows6     decided entries (PROVING, FORWARD, PASS),
 *                                   written by the daemon
 *   ebpfw_pending4 / ebpfw_pending6 PENDING entries the fast path creates for
 *                                   unknown flows, and the daemon's early-drop
 *                                   verdicts on them (DROP)
 * All four are LRU hashes; a flood of new tuples, dropped by fw4 or not, can
 * only evict PENDING and DROP entries, never an offloaded flow. The fast path
 * looks in the decided table first, then in the pending one.
 *
 * Admission by proof: a flow conntrack accepted is PROVING; the TC egress
 * program (ebpfw_egress) finds it by the tuple it leaves with after NAT in
 * ebpfw_egress4 / ebpfw_egress6 (key: that tuple in a flow key whose device
 * fields are zero; value: the flow's key) when the kernel forwards one of its
 * packets, writes the L2 header the kernel put on the frame into the flow and
 * tells the daemon, which makes it FORWARD. A FORWARD entry holds only while
 * its generation is the runtime's: any change to the ruleset or to routing
 * starts a new one, and the flow passes until the egress program has seen
 * the kernel forward it again with the same L2 header (re-proved in place).
 * Only a frame whose source MAC is in ebpfw_macs (the router's own addresses,
 * key: struct ebpfw_mac) proves anything: the kernel writes its own address on
 * what it routes, so a bridged frame, or one redirected before routing, with
 * the same tuple is not mistaken for the kernel's.
 */
#ifndef __EBPFW_ABI_H
#define __EBPFW_ABI_H

#include <linux/types.h>

#define EBPFW_FLOWS_DEFAULT	65536	/* ebpfw_flows4/6 max_entries unless the loader sets them */
#define EBPFW_PENDING_DEFAULT	8192	/* ebpfw_pending4/6 max_entries unless the loader sets them */
#define EBPFW_EVENTS_BYTES	(1024 * 1024)	/* 16k events; NEW take half at most */
#define EBPFW_TX_MAX		256	/* egress devices in ebpfw_tx */
#define EBPFW_EGRESS_DEFAULT	65536	/* ebpfw_egress4/6 max_entries unless the loader sets them */
#define EBPFW_MACS_MAX		1024	/* addresses in ebpfw_macs */

/* struct ebpfw_event.l3proto */
#define EBPFW_L3_IPV4		4
#define EBPFW_L3_IPV6		6

#define EBPFW_NO_DSA_PORT	0xff
#define EBPFW_DSA_CONDUITS	4	/* DSA conduits one object parses tags on */

/*
 * One direction of one connection as it enters the router: the hash keys of
 * the IPv4 and the IPv6 tables. Both start with the same 16 bytes, so the
 * fast path builds one key and hashes 24 bytes for IPv4, 48 for IPv6. No
 * padding: every byte is a field the BPF side writes. Ports and addresses
 * are network order; VLAN ids and the PPPoE session id host order.
 */
struct ebpfw_key4 {
	__u32 ifindex;		/* ingress device the program runs on */
	__u16 vlan[2];		/* VLAN ids as received, [0] outer; 0 = none */
	__u16 pppoe_sid;	/* PPPoE session id; 0 = none */
	__u8 dsa_port;		/* DSA source port (#12); EBPFW_NO_DSA_PORT = none */
	__u8 l4proto;		/* IPPROTO_TCP / IPPROTO_UDP */
	__be16 sport;
	__be16 dport;
	__be32 saddr;
	__be32 daddr;
};

struct ebpfw_key6 {
	__u32 ifindex;
	__u16 vlan[2];
	__u16 pppoe_sid;
	__u8 dsa_port;
	__u8 l4proto;
	__be16 sport;
	__be16 dport;
	__be32 saddr[4];
	__be32 daddr[4];
};

/* Either key; the shared head is read through either member */
union ebpfw_key {
	struct ebpfw_key4 v4;
	struct ebpfw_key6 v6;
};

/*
 * The L2 header a flow leaves with, as the kernel wrote it on the egress
 * device (seen by ebpfw_egress) and as the fast path writes it again.
 */
struct ebpfw_l2 {
	__u8 dmac[6];		/* next hop */
	__u8 smac[6];		/* egress device */
	__be16 vlan_tpid;	/* outer tag protocol (802.1Q or 802.1ad) when vlans > 0 */
	__u16 vlan_tci[2];	/* egress tags, [0] outer, priority bits included */
	__u16 pppoe_sid;	/* PPPoE session; 0 = none (0 is never a session's id) */
	__u8 vlans;		/* egress tags to write: 0, 1 or 2 */
	__u8 dsa_port;		/* egress DSA port (#12); EBPFW_NO_DSA_PORT = none */
};

/* Key of ebpfw_macs (value: the ifindex of a device with that address) */
struct ebpfw_mac {
	__u8 addr[6];
};

/* struct ebpfw_flow.state */
enum ebpfw_state {
	EBPFW_PENDING = 0,	/* seen by the fast path, daemon not decided yet */
	EBPFW_PASS = 1,		/* daemon decided: leave to the stack */
	EBPFW_DROP = 2,		/* fw4 drops this flow: drop until expires_ns */
	EBPFW_FORWARD = 3,	/* proved: rewrite and redirect (while its generation holds) */
	EBPFW_PROVING = 4,	/* conntrack accepted it: pass until the kernel forwards one */
};

/* struct ebpfw_flow.flags */
#define EBPFW_F_NAT		(1 << 0)	/* write nat_* addresses and ports */
#define EBPFW_F_CLOSING		(1 << 1)	/* TCP FIN or RST seen: stack owns it now */
#define EBPFW_F_TC_ONLY		(1 << 2)	/* egress cannot take XDP frames: XDP passes, TC forwards */
#define EBPFW_F_REPORTED	(1 << 3)	/* egress seen and the daemon told; it has not answered yet */

/*
 * Flow table value. The BPF side creates PENDING entries and updates the
 * counters, last_seen_ns and the CLOSING flag; ebpfw_egress writes l2, oif,
 * gen, proof_gen and the REPORTED flag of entries that are PROVING or not of
 * the current generation; everything else is written by the daemon. The
 * daemon makes a reported flow FORWARD in proof_gen, not in its own
 * generation: a proof it reads after a change does not hold after it.
 * Counters are plain adds, no locked instruction: a flow's packets arrive on
 * one RX queue, so only packets of one flow handled on two CPUs at the same
 * instant can lose an increment (an under-count).
 *
 * l2.dsa_port set: oif is a DSA conduit and the frame gets the tag for that
 * port (the port number, plus tag-specific bits documented in
 * src/fw_ebpf/dsa.py), as the egress program read it from the tag the kernel
 * wrote.
 */
struct ebpfw_flow {
	__u64 packets;		/* forwarded (FORWARD) or dropped (DROP) by the fast path */
	__u64 bytes;		/* L3 bytes of those */
	__u64 last_seen_ns;	/* CLOCK_MONOTONIC (coarse, tick resolution) of the last such
				 * packet; PENDING: fine clock of the first packet */
	__u64 expires_ns;	/* DROP: verdict ends at this time */
	__u8 state;		/* enum ebpfw_state */
	__u8 flags;		/* EBPFW_F_* */
	__u16 mtu;		/* largest L3 packet the egress takes */
	__u32 oif;		/* egress ifindex (lowest device) */
	__be32 nat_saddr[4];	/* the packet's tuple after NAT (EBPFW_F_NAT); IPv4 in [0] */
	__be32 nat_daddr[4];
	__be16 nat_sport;
	__be16 nat_dport;
	__be16 csum_addr;	/* ones' complement diff of the address change */
	__be16 csum_port;	/* ones' complement diff of the port change */
	struct ebpfw_l2 l2;
	__u16 pad;
	__u32 gen;		/* FORWARD, DROP: the runtime generation it holds in */
	__u32 proof_gen;	/* egress: the generation its last report was made in */
};

/* Ring buffer record types */
enum ebpfw_event_type {
	EBPFW_EV_NEW = 1,	/* first packet of an unknown flow; a PENDING entry exists */
	EBPFW_EV_CLOSING = 2,	/* FORWARD flow saw FIN or RST */
	EBPFW_EV_PROVED = 3,	/* ebpfw_egress saw the flow leave; its l2 and oif are written */
};

struct ebpfw_event {
	__u32 type;		/* enum ebpfw_event_type */
	__u8 l3proto;		/* EBPFW_L3_*: key.v4 or key.v6 */
	__u8 pad[3];
	union ebpfw_key key;
	__u64 first_ns;		/* NEW: the PENDING entry's last_seen_ns, else 0 */
};

/* Single entry of ebpfw_runtime, written by the daemon */
struct ebpfw_runtime {
	__u64 heartbeat_ns;	/* CLOCK_MONOTONIC of the last sweep; stale = fail open */
	__u32 gen;		/* FORWARD and DROP entries of another generation pass */
	__u32 proving;		/* 0: no flow waits for proof, ebpfw_egress does nothing */
};

/*
 * .rodata.config, set by the loader before load. NEW events are rate limited
 * per CPU by a token bucket: one event per event_interval_ns on average, at
 * most event_burst_ns / event_interval_ns at once (0 = no limit). A shed event
 * only delays admission: its PENDING entry is written all the same and the
 * daemon's sweep adopts entries it did not hear about.
 */
struct ebpfw_config {
	__u64 heartbeat_timeout_ns;	/* older heartbeat: every packet passes */
	__u64 event_interval_ns;
	__u64 event_burst_ns;
	/* ifindexes of the DSA conduits whose frames carry the object's tag
	 * (0 = unused); an untagged object ignores them */
	__u32 dsa_conduits[EBPFW_DSA_CONDUITS];
};

/* Per-CPU counters in ebpfw_stats, indexed by this enum */
enum ebpfw_counter {
	EBPFW_CNT_RX = 0,		/* packets the program saw */
	EBPFW_CNT_FORWARD,
	EBPFW_CNT_DROP,
	EBPFW_CNT_PASS,			/* sum of the pass reasons below */
	EBPFW_CNT_EVENT_LOST,		/* ring buffer full: daemon misses a flow */
	EBPFW_CNT_EVENT_SHED,		/* NEW event over the rate limit: the sweep adopts it */
	EBPFW_CNT_PROVED,		/* egress: a flow's frame seen and reported to the daemon */
	EBPFW_CNT_REPROVED,		/* egress: a flow of an old generation proved again in place */
	EBPFW_CNT_NOT_OURS,		/* egress: a flow's frame the router did not write (bridged,
					 * redirected before routing): proves nothing */
	EBPFW_CNT_REWRITE_ERROR,	/* a helper failed mid-rewrite: dropped (out of memory) */
	/* pass reasons */
	EBPFW_PASS_HEARTBEAT,		/* daemon heartbeat stale: fail open */
	EBPFW_PASS_MULTICAST,		/* multicast or broadcast destination MAC */
	EBPFW_PASS_NOT_IP,		/* not IPv4 / IPv6 (ARP, LLDP, PPPoE discovery, ...) */
	EBPFW_PASS_L2,			/* VLAN depth or PPPoE header not handled */
	EBPFW_PASS_TRUNCATED,		/* frame (or IP payload) shorter than its headers */
	EBPFW_PASS_IP_OPTIONS,		/* IPv4 header with options */
	EBPFW_PASS_FRAGMENT,		/* IPv4 fragment */
	EBPFW_PASS_IPV6_EXT,		/* IPv6 extension header */
	EBPFW_PASS_L4_PROTO,		/* neither TCP nor UDP */
	EBPFW_PASS_TCP_SYN,
	EBPFW_PASS_TCP_CLOSE,		/* FIN or RST */
	EBPFW_PASS_MISS,		/* unknown flow: PENDING created */
	EBPFW_PASS_PENDING,		/* daemon not decided yet */
	EBPFW_PASS_VERDICT,		/* daemon said PASS */
	EBPFW_PASS_CLOSING,		/* flow is closing */
	EBPFW_PASS_DROP_EXPIRED,	/* DROP verdict ran out */
	EBPFW_PASS_TTL,			/* TTL / hop limit <= 1 */
	EBPFW_PASS_MTU,			/* larger than the egress MTU */
	EBPFW_PASS_OTHER_HOOK,		/* flow owned by the TC hook */
	EBPFW_PASS_NO_TX,		/* egress not in ebpfw_tx (XDP) */
	EBPFW_PASS_UDP_ZERO_CSUM,	/* IPv6 UDP without checksum (invalid) */
	EBPFW_PASS_L2_REWRITE,		/* this hook cannot do the L2 change */
	EBPFW_PASS_PROVING,		/* waiting for the kernel to forward one of the flow's packets */
	EBPFW_PASS_STALE,		/* of an old generation: waiting to be proved again */
	EBPFW_PASS_DSA_TAG,		/* DSA tag not understood (garbled, trap, other switch) */
	EBPFW_PASS_DSA_UNTAGGED,	/* conduit frame without its tag (stripped in hardware) */
	EBPFW_CNT_MAX,
};

/*
 * The single value of the per-CPU array ebpfw_stats: the counters the daemon
 * sums, then the fast path's own per-CPU state (one lookup per packet for
 * both). The clock is read once per tick per CPU, not per packet: when
 * jiffies moved, now_ns and fresh are taken again.
 */
struct ebpfw_stats {
	__u64 counters[EBPFW_CNT_MAX];
	__u64 tick;		/* jiffies when this CPU last read the clock */
	__u64 now_ns;		/* coarse CLOCK_MONOTONIC read then */
	__u64 fresh;		/* the daemon's heartbeat was fresh then */
	__u64 gen;		/* ebpfw_runtime's gen and proving then */
	__u64 proving;
	__u64 ev_credit_ns;	/* NEW event token bucket */
	__u64 ev_clock_ns;	/* now_ns when the bucket was last filled */
};

#endif /* __EBPFW_ABI_H */
