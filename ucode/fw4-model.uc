#!/usr/bin/ucode
// SPDX-License-Identifier: GPL-2.0-only
//
// Prints firewall4's parsed model as one JSON object (the contract in fw4-cases/README.md).
// load(false): parse UCI and ubus like `fw4 print`, write no state file. Only collects; the
// Python side (fw_ebpf/fw4.py) does the thinking.
//
// Beside fw4's own keys, `ebpfw` says what the model was made from, so a model made while
// netifd was not answering can be told from one of a router whose networks are down: the
// networks netifd reported, the enabled interfaces and zones in UCI.

let fw4 = require("fw4");
let uci = require("uci");

fw4.load(false);

let cursor = uci.cursor();
let uci_networks = [];
let uci_zones = 0;

cursor.foreach("network", "interface", s => {
	if (s.disabled != "1")
		push(uci_networks, s[".name"]);
});
cursor.foreach("firewall", "zone", s => { if (s.enabled != "0") uci_zones++; });

let chains = [ "input", "output", "forward", "dstnat", "srcnat" ];

for (let zone in (fw4.zones() ?? []))
	for (let kind in [ "input", "output", "forward", "srcnat", "dstnat" ])
		push(chains, `${kind}_${zone.name}`);

let rules = {};
let redirects = {};

for (let chain in chains) {
	let r = fw4.rules(chain);
	let d = fw4.redirects(chain);

	if (length(r))
		rules[chain] = r;

	if (length(d))
		redirects[chain] = d;
}

printf("%J\n", {
	defaults: {
		input: fw4.input_policy(),
		output: fw4.output_policy(),
		forward: fw4.forward_policy(),
		flow_offloading: fw4.default_option("flow_offloading"),
		drop_invalid: fw4.default_option("drop_invalid"),
		synflood_protect: fw4.default_option("synflood_protect")
	},
	zones: fw4.zones(),
	rules: rules,
	redirects: redirects,
	ipsets: fw4.ipsets(),
	ebpfw: {
		netifd: keys(fw4.state?.networks ?? {}),
		uci_networks: uci_networks,
		uci_zones: uci_zones
	}
});
