// SPDX-License-Identifier: GPL-2.0-only
/*
 * Flood generator for BPF_PROG_TEST_RUN with BPF_F_TEST_XDP_LIVE_FRAMES: every
 * frame a UDP datagram of a new random tuple (source address low 16 bits,
 * source and destination port), IPv4 or IPv6 by a random bit. Live frames keep
 * whatever the last run left in the page, so each frame is written whole from
 * flood_tmpl (index 0: IPv4, 1: IPv6; both 64 bytes long, random fields zero)
 * and the random fields are added with the checksums fixed incrementally
 * (RFC 1624), so the router's stack sees well-formed packets. XDP_TX sends
 * them out of the ctx device.
 *
 * Paced in the kernel: a test run costs ~30 ms of set-up here, so the generator
 * is one long run and sends a frame only when flood_pace says one is due, else
 * drops it (recycled at once). After a pause (the generator's CPU taken by
 * something else) it catches up on at most slack_ns worth of frames, and no
 * faster than one per burst_ns: a burst at full speed would overflow the
 * receiving veth's ring of 256 frames.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#define FLOOD_LEN 64

/* offsets in the frame: Ethernet 14, IPv4 20 / IPv6 40, UDP 8 */
#define V4_CSUM 24
#define V4_SADDR_LO 28
#define V4_UDP 34
#define V6_SADDR_LO 36
#define V6_UDP 54

struct flood_tmpl {
	__u8 frame[FLOOD_LEN];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, struct flood_tmpl);
} flood_tmpl SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} flood_count SEC(".maps");

struct flood_pace {
	__u64 interval_ns;	/* between two frames at the rate */
	__u64 burst_ns;		/* between two frames while catching up */
	__u64 slack_ns;		/* the longest backlog caught up on */
	__u64 next_ns;		/* when the next frame is due (0: now) */
	__u64 last_ns;		/* when the last frame went */
};

/* one generator CPU at a time: no atomics needed */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct flood_pace);
} flood_pace SEC(".maps");

static __always_inline int due(struct flood_pace *p)
{
	__u64 now = bpf_ktime_get_ns();

	if (now < p->next_ns || now - p->last_ns < p->burst_ns)
		return 0;
	if (now - p->next_ns > p->slack_ns)
		p->next_ns = now - p->slack_ns;
	p->next_ns += p->interval_ns;
	p->last_ns = now;
	return 1;
}

/* one's-complement checksum after adding the 16-bit words a, b, c to a field that was 0 */
static __always_inline __u16 csum_add3(__u16 check, __u16 a, __u16 b, __u16 c)
{
	__u32 sum = (__u16)~check;

	sum += a;
	sum += b;
	sum += c;
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return ~sum;
}

static __always_inline void put16(__u8 *p, __u16 v)
{
	__builtin_memcpy(p, &v, 2);
}

static __always_inline __u16 get16(const __u8 *p)
{
	__u16 v;

	__builtin_memcpy(&v, p, 2);
	return v;
}

SEC("xdp")
int flood(struct xdp_md *ctx)
{
	__u8 *data = (void *)(long)ctx->data;
	__u8 *end = (void *)(long)ctx->data_end;
	__u32 zero = 0, r1, r2, idx;
	struct flood_pace *pace = bpf_map_lookup_elem(&flood_pace, &zero);
	__u64 *sent = bpf_map_lookup_elem(&flood_count, &zero);
	struct flood_tmpl *t;
	__u16 addr, sport, dport, check;
	__u8 *udp;

	if (!pace || !sent || data + FLOOD_LEN > end)
		return XDP_ABORTED;
	if (!due(pace))
		return XDP_DROP;
	r1 = bpf_get_prandom_u32();
	r2 = bpf_get_prandom_u32();
	idx = r1 >> 31;
	addr = r1;
	sport = r2;
	dport = r2 >> 16;
	t = bpf_map_lookup_elem(&flood_tmpl, &idx);
	if (!t)
		return XDP_ABORTED;
	__builtin_memcpy(data, t->frame, FLOOD_LEN);
	if (idx == 0) {
		put16(data + V4_SADDR_LO, addr);
		put16(data + V4_CSUM, csum_add3(get16(data + V4_CSUM), addr, 0, 0));
		udp = data + V4_UDP;
	} else {
		put16(data + V6_SADDR_LO, addr);
		udp = data + V6_UDP;
	}
	put16(udp, sport);
	put16(udp + 2, dport);
	check = csum_add3(get16(udp + 6), addr, sport, dport);
	put16(udp + 6, check ? check : 0xffff);	/* 0 means "no checksum" */
	(*sent)++;
	return XDP_TX;
}

char _license[] SEC("license") = "GPL";
