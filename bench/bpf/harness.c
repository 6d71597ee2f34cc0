// SPDX-License-Identifier: GPL-2.0-only
/*
 * Per-packet cost harness for BPF_PROG_TEST_RUN with repeat: the kernel runs
 * the program again and again on one buffer, so a forwarding program would
 * meet its own output (NAT undone or missed, TTL decremented to 1 after a few
 * dozen runs). This program restores the frame first (length and the first
 * HARNESS_COPY bytes), then tail-calls the program under test. Its own cost is
 * measured by tail-calling an XDP_PASS program and subtracted.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#define HARNESS_COPY 96

struct harness_tmpl {
	__u32 len;	/* frame length the program under test must see */
	__u8 data[HARNESS_COPY];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct harness_tmpl);
} harness_tmpl SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} harness_target SEC(".maps");

SEC("xdp")
int harness(struct xdp_md *ctx)
{
	__u32 zero = 0;
	struct harness_tmpl *t = bpf_map_lookup_elem(&harness_tmpl, &zero);
	void *data, *end;
	int grown;

	if (!t)
		return XDP_ABORTED;
	grown = (int)(ctx->data_end - ctx->data) - (int)t->len;
	if (grown && bpf_xdp_adjust_head(ctx, grown))
		return XDP_ABORTED;
	data = (void *)(long)ctx->data;
	end = (void *)(long)ctx->data_end;
	if (data + HARNESS_COPY > end)
		return XDP_ABORTED;
	__builtin_memcpy(data, t->data, HARNESS_COPY);
	bpf_tail_call(ctx, &harness_target, 0);
	return XDP_ABORTED;
}

char _license[] SEC("license") = "GPL";
