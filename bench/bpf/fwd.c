// SPDX-License-Identifier: GPL-2.0-only
/*
 * The minimal XDP forwarder ebpfw is compared with: no parsing, no lookup of
 * the flow, fixed MAC rewrite and a redirect through a one-slot devmap (the
 * same redirect ebpfw uses).
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct fwd_l2 {
	__u8 dmac[6];
	__u8 smac[6];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct fwd_l2);
} fwd_l2 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_DEVMAP);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} fwd_tx SEC(".maps");

SEC("xdp")
int fwd(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	__u32 zero = 0;
	struct fwd_l2 *l2 = bpf_map_lookup_elem(&fwd_l2, &zero);

	if (!l2 || data + sizeof(*l2) > end)
		return XDP_PASS;
	__builtin_memcpy(data, l2, sizeof(*l2));
	return bpf_redirect_map(&fwd_tx, 0, 0);
}

char _license[] SEC("license") = "GPL";
