// SPDX-License-Identifier: GPL-2.0-only
/*
 * Packet generator for BPF_PROG_TEST_RUN with BPF_F_TEST_XDP_LIVE_FRAMES.
 * Live frames recycle their pages without restoring the data, and the router
 * rewrites headers in place (NAT, TTL, MACs), so every frame gets its headers
 * written again from gen_tmpl before it is sent (XDP_TX: out of the ctx device).
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#define GEN_HDR_LEN 64	/* Ethernet + IPv6 + UDP fit; frames are at least this long */

struct gen_tmpl {
	__u8 hdr[GEN_HDR_LEN];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct gen_tmpl);
} gen_tmpl SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} gen_count SEC(".maps");

SEC("xdp")
int gen(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	__u32 zero = 0;
	struct gen_tmpl *t = bpf_map_lookup_elem(&gen_tmpl, &zero);
	__u64 *sent = bpf_map_lookup_elem(&gen_count, &zero);

	if (!t || !sent || data + GEN_HDR_LEN > end)
		return XDP_ABORTED;
	__builtin_memcpy(data, t->hdr, GEN_HDR_LEN);
	(*sent)++;
	return XDP_TX;
}

char _license[] SEC("license") = "GPL";
