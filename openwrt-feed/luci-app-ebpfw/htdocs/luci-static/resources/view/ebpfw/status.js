// SPDX-License-Identifier: GPL-2.0-only
'use strict';
'require view';
'require dom';
'require poll';
'require rpc';
'require ui';
'require uci';
'require form';

/*
 * Status -> Flow offloading (eBPF): the switch, the daemon's state, the fast path's counters
 * and a plot of them, why packets go to the stack, and the flow table a page at a time.
 * Everything comes from the `ebpfw` ubus object (status, flows; flush and resync for users
 * with write access) and the firewall config; a live refresh with poll, no page reload.
 */

const callStatus = rpc.declare({ object: 'ebpfw', method: 'status', reject: true });
const callFlows = rpc.declare({
	object: 'ebpfw', method: 'flows', reject: true,
	params: [ 'state', 'proto', 'limit', 'offset', 'sort' ]
});
const callFlush = rpc.declare({ object: 'ebpfw', method: 'flush', reject: true });
const callResync = rpc.declare({ object: 'ebpfw', method: 'resync', reject: true });

const SWITCH = 'flow_offloading_ebpf';
const PAGE_SIZE = 25;
const PLOT_WINDOW_S = 300;
const MIN_RATE_S = 1;
const PLOT_H = 160;
const SVG_NS = 'http://www.w3.org/2000/svg';

const MODES = {
	'xdp': _('XDP (native, in the driver)'),
	'xdp-generic': _('XDP (generic)'),
	'tc': _('TC ingress'),
	'xdp+tc': _('XDP (native), TC where XDP cannot send'),
	'xdp-generic+tc': _('XDP (generic), TC where XDP cannot send')
};

const STATES = {
	'forward': _('Offloaded'),
	'proving': _('Waiting for proof'),
	'pending': _('Being checked'),
	'pass': _('Left to the network stack'),
	'drop': _('Dropped early')
};

/* pass reasons (status.pass_reasons), answering "why is this packet not offloaded" */
const REASONS = {
	'heartbeat': _('the daemon did not answer in time, so the fast path failed open'),
	'multicast': _('multicast or broadcast frame'),
	'not_ip': _('not IPv4 or IPv6 (ARP, LLDP, PPPoE discovery, ...)'),
	'l2': _('VLAN nesting or PPPoE framing the fast path does not handle'),
	'truncated': _('frame shorter than its headers'),
	'ip_options': _('IPv4 header with options'),
	'fragment': _('IPv4 fragment'),
	'ipv6_ext': _('IPv6 extension header'),
	'l4_proto': _('neither TCP nor UDP (ICMP, GRE, ESP, ...)'),
	'tcp_syn': _('TCP connection being set up (SYN)'),
	'tcp_close': _('TCP connection ending (FIN or RST)'),
	'miss': _('first packet of a new flow: the daemon is asked to check it'),
	'pending': _('flow still being checked (waiting for conntrack)'),
	'verdict': _('flow the daemon left to the stack on purpose (see its note in the flow table)'),
	'closing': _('flow closing'),
	'drop_expired': _('early-drop verdict expired: checked again'),
	'ttl': _('TTL or hop limit about to run out'),
	'mtu': _('packet larger than the outgoing MTU'),
	'other_hook': _('flow handled by the other hook (TC) of this interface'),
	'no_tx': _('outgoing device cannot take XDP frames'),
	'udp_zero_csum': _('IPv6 UDP without checksum (invalid)'),
	'l2_rewrite': _('link-layer change this hook cannot make'),
	'proving': _('flow accepted by conntrack, waiting for the kernel to forward one of its packets'),
	'stale': _('firewall or routing changed: flow waiting to be forwarded by the kernel again')
};

/* rates: "12.3 K"; below 1000 LuCI's %m prints the value as it is, so round it */
function fmtRate(v) {
	return (v == null) ? '-' : '%1000.1m'.format(Math.round(v));
}

/* counters go past 2^31, where %d (32-bit) wraps */
function count(v) {
	return String(Math.floor(+v || 0));
}

function row(title, value, id) {
	return E('tr', { 'class': 'tr' }, [
		E('td', { 'class': 'td left', 'width': '33%' }, [ title ]),
		E('td', { 'class': 'td left', 'id': id }, [ value ])
	]);
}

function svg(name, attrs) {
	const el = document.createElementNS(SVG_NS, name);
	for (const k in attrs)
		el.setAttribute(k, attrs[k]);
	return el;
}

/* rpc.js errors read "RPC call to ebpfw/status failed with error -32000: Object not found" */
function errorKind(err) {
	const m = /failed with (?:error|ubus code) (-?\d+)/.exec(String(err && err.message));
	switch (m ? +m[1] : null) {
	case -32000: return 'down';         /* no `ebpfw` object on ubus: the daemon is not running */
	case -32002: case 6: return 'denied';
	case -32003: case 7: return 'timeout';
	default: return 'error';
	}
}

return view.extend({
	load: function() {
		return Promise.all([
			L.resolveDefault(uci.load('firewall'), null),
			callStatus().catch(e => ({ __error: e }))
		]);
	},

	render: function(data) {
		const defaults = uci.sections('firewall', 'defaults')[0];

		this.writable = L.hasViewPermission() === true;
		this.defaultsSid = defaults ? defaults['.name'] : null;
		this.samples = [];
		this.filter = { state: null, proto: null, offset: 0 };
		this.names = {};

		const page = E('div', { 'id': 'ebpfw' }, [
			E('h2', {}, [ _('Flow offloading (eBPF)') ]),
			E('div', { 'class': 'cbi-map-descr' }, [
				_('ebpfw forwards the packets of connections the firewall has already accepted from an XDP or TC program, skipping most of the network stack. Anything unusual still goes through the stack.')
			]),
			this.noteArea = E('div', { 'id': 'ebpfw-notes' }),
			this.switchArea = E('div', { 'id': 'ebpfw-switch' }),
			this.live = E('div', { 'id': 'ebpfw-live' }, this.renderLive())
		]);

		if (!this.writable)
			this.noteArea.appendChild(E('div', { 'class': 'alert-message notice', 'id': 'ebpfw-readonly' }, [
				_('You have read-only access to this page: the switch, Flush and Resync are disabled. Write access comes with the luci-app-ebpfw ACL.')
			]));

		return this.renderSwitch().then(node => {
			this.switchArea.appendChild(node);
			this.update(data[1], null);
			poll.add(L.bind(this.refresh, this));
			return page;
		});
	},

	/* the switch, Save & Apply through the view's footer, next to fw4's own offloading */
	renderSwitch: function() {
		if (this.defaultsSid == null)
			return Promise.resolve(E('div', { 'class': 'alert-message warning' }, [
				_('The firewall configuration has no defaults section, so the switch cannot be shown.')
			]));

		const m = new form.Map('firewall');
		const s = m.section(form.NamedSection, this.defaultsSid, 'defaults', _('Switch'));
		s.anonymous = true;

		let o = s.option(form.Flag, SWITCH, _('eBPF flow offloading'),
			_('Forward established connections from XDP/TC programs (ebpfw). Takes effect with Save & Apply.'));
		o.rmempty = false;

		for (const [ opt, title ] of [
			[ 'flow_offloading', _('Software flow offloading (fw4 flowtable)') ],
			[ 'flow_offloading_hw', _('Hardware flow offloading (fw4)') ]
		]) {
			o = s.option(form.DummyValue, '_' + opt, title);
			o.cfgvalue = sid => (uci.get('firewall', sid, opt) == '1') ? _('on') : _('off');
		}

		const sw = uci.get('firewall', this.defaultsSid, SWITCH) == '1';
		const flowtable = uci.get('firewall', this.defaultsSid, 'flow_offloading') == '1';

		return m.render().then(node => E('div', {}, [
			node,
			(sw && flowtable) ? E('div', { 'class': 'alert-message warning', 'id': 'ebpfw-flowtable-warning' }, [
				_('Software flow offloading (the fw4 flowtable) is on as well. Connections in the flowtable skip the forward path and conntrack updates that ebpfw relies on, so ebpfw leaves them to the flowtable. Turn one of the two off; software flow offloading is set in Network -> Firewall.')
			]) : ''
		]));
	},

	renderLive: function() {
		const stateSel = E('select', { 'id': 'ebpfw-filter-state', 'change': ev => this.setFilter('state', ev.target.value) },
			[ E('option', { 'value': '' }, [ _('All states') ]) ].concat(
				Object.keys(STATES).map(k => E('option', { 'value': k }, [ STATES[k] ]))));
		const protoSel = E('select', { 'id': 'ebpfw-filter-proto', 'change': ev => this.setFilter('proto', ev.target.value) }, [
			E('option', { 'value': '' }, [ _('All protocols') ]),
			E('option', { 'value': 'tcp' }, [ 'TCP' ]),
			E('option', { 'value': 'udp' }, [ 'UDP' ])
		]);

		this.plot = svg('svg', {
			'id': 'ebpfw-plot', 'width': '100%', 'height': PLOT_H + 20, 'role': 'img'
		});

		return [
			section('ebpfw-service', _('Service'), [
				E('table', { 'class': 'table' }, [
					row(_('State'), '-', 'ebpfw-state'),
					row(_('Running for'), '-', 'ebpfw-uptime'),
					row(_('Heartbeat (fail-open)'), '-', 'ebpfw-heartbeat'),
					row(_('Early drop'), '-', 'ebpfw-early-drop'),
					row(_('Time to offload a new connection'), '-', 'ebpfw-admission')
				]),
				E('div', { 'class': 'cbi-section-actions' }, [
					this.flushBtn = E('button', {
						'class': 'cbi-button cbi-button-negative', 'id': 'ebpfw-flush', 'disabled': '',
						'title': _('Hand every flow back to the network stack'),
						'click': ui.createHandlerFn(this, 'handleFlush')
					}, [ _('Flush') ]), ' ',
					this.resyncBtn = E('button', {
						'class': 'cbi-button cbi-button-action', 'id': 'ebpfw-resync', 'disabled': '',
						'title': _('Re-read the configuration and the firewall, check every flow again'),
						'click': ui.createHandlerFn(this, 'handleResync')
					}, [ _('Resync') ])
				])
			]),
			section('ebpfw-interfaces', _('Interfaces'), [
				E('table', { 'class': 'table', 'id': 'ebpfw-interface-table' })
			]),
			section('ebpfw-traffic', _('Traffic'), [
				E('table', { 'class': 'table' }, [
					E('tr', { 'class': 'tr table-titles' }, [
						E('th', { 'class': 'th' }, [ ' ' ]),
						E('th', { 'class': 'th' }, [ _('Since start') ]),
						E('th', { 'class': 'th' }, [ _('Per second (last refresh)') ])
					]),
					this.trafficRow(_('Packets offloaded'), 'forward'),
					this.trafficRow(_('Bytes offloaded'), 'bytes'),
					this.trafficRow(_('Packets to the network stack'), 'pass'),
					this.trafficRow(_('Packets dropped early'), 'drop')
				]),
				E('div', {}, [ this.plot ]),
				E('div', { 'class': 'cbi-section-descr', 'id': 'ebpfw-plot-legend' }, [
					this.swatch('#4caf50'), ' ', _('offloaded packets/s'), ' \u00a0 ',
					this.swatch('#2196f3'), ' ', _('packets/s to the network stack'), ' \u00a0 ',
					E('span', { 'id': 'ebpfw-plot-scale' }, [ '' ])
				]),
				E('table', { 'class': 'table', 'id': 'ebpfw-flow-counts' }, [
					E('tr', { 'class': 'tr table-titles' },
						Object.keys(STATES).map(k => E('th', { 'class': 'th' }, [ STATES[k] ]))),
					E('tr', { 'class': 'tr' },
						Object.keys(STATES).map(k => E('td', { 'class': 'td', 'id': 'ebpfw-flows-' + k }, [ '-' ])))
				])
			]),
			section('ebpfw-reasons', _('Why packets went to the network stack'), [
				E('table', { 'class': 'table', 'id': 'ebpfw-reason-table' })
			]),
			section('ebpfw-flows', _('Flows'), [
				E('div', { 'class': 'cbi-section-descr' }, [
					_('Entries of the fast path\'s flow table, largest first. Each direction of a connection is one entry.')
				]),
				E('div', {}, [ stateSel, ' ', protoSel ]),
				E('table', { 'class': 'table', 'id': 'ebpfw-flow-table' }),
				E('div', { 'class': 'cbi-section-actions' }, [
					E('button', { 'class': 'cbi-button', 'id': 'ebpfw-prev', 'disabled': '',
						'click': ev => this.page(-1) }, [ _('Previous') ]), ' ',
					E('span', { 'id': 'ebpfw-page' }, [ '' ]), ' ',
					E('button', { 'class': 'cbi-button', 'id': 'ebpfw-next', 'disabled': '',
						'click': ev => this.page(1) }, [ _('Next') ]),
				])
			])
		];
	},

	trafficRow: function(title, key) {
		return E('tr', { 'class': 'tr' }, [
			E('td', { 'class': 'td left' }, [ title ]),
			E('td', { 'class': 'td', 'id': 'ebpfw-total-' + key }, [ '-' ]),
			E('td', { 'class': 'td', 'id': 'ebpfw-rate-' + key }, [ '-' ])
		]);
	},

	swatch: function(colour) {
		const s = svg('svg', { 'width': '12', 'height': '12', 'viewBox': '0 0 12 12' });
		s.appendChild(svg('rect', { 'width': '12', 'height': '12', 'fill': colour }));
		return s;
	},

	/* -- refresh ------------------------------------------------------------------------- */

	refresh: function() {
		const f = this.filter;
		/* an unset filter is left out (undefined), not sent as null: ubus has no null */
		return callStatus().then(status => {
			return callFlows(f.state || undefined, f.proto || undefined, PAGE_SIZE, f.offset, 'bytes')
				.then(flows => this.update(status, flows), e => this.update(status, { __error: e }));
		}, e => this.update({ __error: e }, null));
	},

	update: function(status, flows) {
		if (status.__error) {
			this.showDown(status.__error);
			return;
		}
		this.showUp();
		this.names = {};
		for (const h of (status.hooks || []))
			this.names[h.ifindex] = h.name;

		const now = Date.now() / 1000;
		const c = status.counters || {};
		const sample = { t: now, uptime: status.uptime, forward: c.forward || 0, pass: c.pass || 0,
			drop: c.drop || 0, bytes: (status.offloaded || {}).bytes || 0 };
		const prev = this.samples[this.samples.length - 1];
		if (prev && sample.uptime < prev.uptime)
			this.samples = [];   /* the daemon restarted: its counters began again */
		const last = this.samples[this.samples.length - 1];
		const dt = last ? sample.t - last.t : 0;
		/* a rate over less than a second says little (byte counts move with the daemon's
		 * sweeps): until then the previous rates stand and no point is added */
		const fresh = !last || dt >= MIN_RATE_S;
		for (const k of [ 'forward', 'pass', 'drop', 'bytes' ])
			sample['r_' + k] = !last ? null : fresh ? Math.max(0, sample[k] - last[k]) / dt : last['r_' + k];
		if (fresh) {
			this.samples.push(sample);
			this.samples = this.samples.filter(s => now - s.t <= PLOT_WINDOW_S);
		}

		this.setText('ebpfw-state', _('Running'));
		this.setText('ebpfw-uptime', '%t'.format(Math.floor(status.uptime || 0)));
		const hb = status.heartbeat || {};
		const failed = (status.pass_reasons || {}).heartbeat || 0;
		this.setText('ebpfw-heartbeat',
			_('last beat %.0f ms ago; the fast path fails open after %.1f s without one').format(hb.age_ms || 0, (hb.timeout_ms || 0) / 1000) +
			(failed ? ' ' + _('(%s packets passed while it did)').format(count(failed)) : ''));
		this.setText('ebpfw-early-drop', status.early_drop
			? _('on: connections the firewall drops are dropped in the fast path')
			: _('off (needs early_drop in /etc/config/ebpfw and the firewall model)'));
		const adm = status.admission_ms || {};
		this.setText('ebpfw-admission', adm.count
			? _('median %.1f ms, 99th percentile %.1f ms, max %.1f ms (%d flows)').format(adm.p50, adm.p99, adm.max, adm.count)
			: _('no flow offloaded yet'));

		this.flushBtn.disabled = this.resyncBtn.disabled = !this.writable;

		this.updateInterfaces(status.hooks || []);
		this.setText('ebpfw-total-forward', count(sample.forward));
		this.setText('ebpfw-total-bytes', '%1024.2mB'.format(sample.bytes));
		this.setText('ebpfw-total-pass', count(sample.pass));
		this.setText('ebpfw-total-drop', count(sample.drop));
		this.setText('ebpfw-rate-forward', fmtRate(sample.r_forward));
		this.setText('ebpfw-rate-bytes', (sample.r_bytes == null) ? '-' : '%1024.2mB'.format(Math.round(sample.r_bytes)));
		this.setText('ebpfw-rate-pass', fmtRate(sample.r_pass));
		this.setText('ebpfw-rate-drop', fmtRate(sample.r_drop));
		for (const k in STATES)
			this.setText('ebpfw-flows-' + k, '%d'.format((status.flows || {})[k] || 0));
		this.drawPlot();
		this.updateReasons(status.pass_reasons || {}, c.pass || 0);
		if (flows)
			this.updateFlows(flows);
	},

	setText: function(id, text) {
		const el = document.getElementById(id);
		if (el && el.textContent != text)
			el.textContent = text;
	},

	showUp: function() {
		const down = document.getElementById('ebpfw-down');
		if (down)
			down.remove();
		this.live.hidden = false;
	},

	/* not running, or not reachable: say what is wrong and how to turn it on, keep polling */
	showDown: function(err) {
		const kind = errorKind(err);
		const on = this.defaultsSid != null && uci.get('firewall', this.defaultsSid, SWITCH) == '1';
		let title, text;

		if (kind == 'down' && !on) {
			title = _('eBPF flow offloading is off.');
			text = this.writable
				? _('Turn it on with the switch below, then Save & Apply. From a shell: uci set firewall.@defaults[0].flow_offloading_ebpf=1; uci commit firewall; reload_config')
				: _('An administrator can turn it on here or with: uci set firewall.@defaults[0].flow_offloading_ebpf=1; uci commit firewall; reload_config');
		}
		else if (kind == 'down') {
			title = _('ebpfw is switched on but not running.');
			text = _('It failed to start or stopped: the system log says why (logread -e ebpfw). Start it again with: /etc/init.d/ebpfw restart. Until it runs, every packet takes the normal network stack; programs left attached pass everything once their heartbeat is stale (fail-open).');
		}
		else if (kind == 'denied') {
			title = _('Access denied.');
			text = _('This login may not read the ebpfw status (luci-app-ebpfw ACL).');
		}
		else if (kind == 'timeout') {
			title = _('ebpfw does not answer.');
			text = _('The daemon is running but busy or stuck; see the system log (logread -e ebpfw).');
		}
		else {
			title = _('Cannot read the ebpfw status.');
			text = String(err && err.message || err);
		}

		let box = document.getElementById('ebpfw-down');
		if (!box) {
			box = E('div', { 'class': 'alert-message warning', 'id': 'ebpfw-down' });
			this.noteArea.appendChild(box);
		}
		const wanted = title + '\n' + text;
		if (box.getAttribute('data-text') != wanted) {
			box.setAttribute('data-text', wanted);
			box.setAttribute('data-kind', (kind == 'down') ? (on ? 'stopped' : 'off') : kind);
			dom.content(box, [ E('h4', {}, [ title ]), E('p', {}, [ text ]) ]);
		}
		this.live.hidden = true;
		this.samples = [];
	},

	updateInterfaces: function(hooks) {
		fillTable('ebpfw-interface-table', [ _('Interface'), _('Hook'), _('Offloaded flows entering') ],
			hooks.map(h => E('tr', { 'class': 'tr', 'data-ifname': h.name }, [
				E('td', { 'class': 'td' }, [ h.name ]),
				E('td', { 'class': 'td', 'data-mode': h.mode }, [ MODES[h.mode] || h.mode ]),
				E('td', { 'class': 'td' }, [ '%d'.format(h.flows || 0) ])
			])), _('No interface attached'));
	},

	updateReasons: function(reasons, total) {
		const ranked = Object.keys(reasons).filter(k => reasons[k] > 0)
			.sort((a, b) => reasons[b] - reasons[a]);
		fillTable('ebpfw-reason-table', [ _('Reason'), _('Packets'), _('Share') ],
			ranked.map(k => E('tr', { 'class': 'tr', 'data-reason': k }, [
				E('td', { 'class': 'td left' }, [ REASONS[k] || k ]),
				E('td', { 'class': 'td' }, [ count(reasons[k]) ]),
				E('td', { 'class': 'td' }, [ total ? '%.1f%%'.format(100 * reasons[k] / total) : '-' ])
			])), _('No packet went to the stack yet'));
	},

	ifname: function(ifindex) {
		return (ifindex == null) ? '-' : (this.names[ifindex] || '#%d'.format(ifindex));
	},

	updateFlows: function(reply) {
		const rows = [];
		for (const f of (reply.__error ? [] : reply.flows || [])) {
			const nat = f.nat_src ? '%s \u2192 %s'.format(f.nat_src, f.nat_dst) : '';
			let note = f.reason || '';
			if (f.hook == 'tc')
				note += ' (' + _('from TC') + ')';
			rows.push(E('tr', { 'class': 'tr', 'data-state': f.state, 'data-proto': f.proto }, [
				E('td', { 'class': 'td' }, [ STATES[f.state] || f.state ]),
				E('td', { 'class': 'td hide-xs' }, [ 'IPv%d'.format(f.family) ]),
				E('td', { 'class': 'td' }, [ String(f.proto).toUpperCase() ]),
				E('td', { 'class': 'td' }, [ f.src ]),
				E('td', { 'class': 'td' }, [ f.dst ]),
				E('td', { 'class': 'td hide-xs' }, [ nat ]),
				E('td', { 'class': 'td' }, [ '%s \u2192 %s'.format(this.ifname(f.ifindex), this.ifname(f.oif)) ]),
				E('td', { 'class': 'td' }, [ '%1024.2mB (%s %s)'.format(f.bytes, count(f.packets), _('Pkts.')) ]),
				E('td', { 'class': 'td hide-xs' }, [ (f.idle_s != null) ? '%.1f s'.format(f.idle_s) : '-' ]),
				E('td', { 'class': 'td hide-xs' }, [ note ])
			]));
		}
		fillTable('ebpfw-flow-table', [
			_('State'), _('Network'), _('Protocol'), _('Source'), _('Destination'),
			_('Translated to'), _('Interfaces'), _('Transfer'), _('Idle'), _('Note')
		], rows, reply.__error ? String(reply.__error.message || reply.__error) : _('No flow in the table'));

		const total = reply.total || 0, first = reply.offset || 0;
		const shown = (reply.flows || []).length;
		this.setText('ebpfw-page', shown
			? _('%d-%d of %d').format(first + 1, first + shown, total)
			: _('0 of %d').format(total));
		document.getElementById('ebpfw-prev').disabled = first <= 0;
		document.getElementById('ebpfw-next').disabled = first + shown >= total;
		this.total = total;
	},

	setFilter: function(key, value) {
		this.filter[key] = value || null;
		this.filter.offset = 0;
		return this.refresh();
	},

	page: function(step) {
		const next = this.filter.offset + step * PAGE_SIZE;
		if (next < 0 || next >= (this.total || 0))
			return;
		this.filter.offset = next;
		return this.refresh();
	},

	/* offloaded vs stack packets per second over the last minutes */
	drawPlot: function() {
		const rated = this.samples.filter(s => s.r_forward != null);
		const plot = this.plot;
		while (plot.firstChild)
			plot.removeChild(plot.firstChild);

		let peak = 0;
		for (const s of rated)
			peak = Math.max(peak, s.r_forward, s.r_pass);
		const top = niceCeiling(peak);
		const now = Date.now() / 1000;
		/* user units are pixels: the plot is as wide as the page, its text keeps its size */
		const W = Math.max(200, plot.getBoundingClientRect().width || 600);
		plot.setAttribute('viewBox', '0 0 %d %d'.format(W, PLOT_H + 20));
		const x = s => W - (now - s.t) / PLOT_WINDOW_S * W;
		const y = v => PLOT_H - v / top * PLOT_H;

		plot.appendChild(svg('rect', { 'x': 0, 'y': 0, 'width': W, 'height': PLOT_H,
			'fill': 'none', 'stroke': 'currentColor', 'stroke-opacity': '0.3' }));
		for (const frac of [ 0.25, 0.5, 0.75 ])
			plot.appendChild(svg('line', { 'x1': 0, 'x2': W, 'y1': PLOT_H * frac, 'y2': PLOT_H * frac,
				'stroke': 'currentColor', 'stroke-opacity': '0.15' }));
		const label = (text, xpos, ypos, anchor) => {
			const t = svg('text', { 'x': xpos, 'y': ypos, 'font-size': '11', 'fill': 'currentColor',
				'text-anchor': anchor || 'start' });
			t.textContent = text;
			plot.appendChild(t);
		};
		label(_('%s packets/s').format(fmtRate(top)), 4, 12);
		label(_('-%d min').format(PLOT_WINDOW_S / 60), 0, PLOT_H + 15);
		label(_('now'), W, PLOT_H + 15, 'end');

		for (const [ key, colour ] of [ [ 'r_pass', '#2196f3' ], [ 'r_forward', '#4caf50' ] ])
			plot.appendChild(svg('polyline', {
				'id': 'ebpfw-plot-' + key.substring(2), 'fill': 'none', 'stroke': colour, 'stroke-width': '2',
				'points': rated.map(s => '%.1f,%.1f'.format(x(s), y(s[key]))).join(' ')
			}));
		this.setText('ebpfw-plot-scale', rated.length
			? _('(%d-minute window, one point per refresh)').format(PLOT_WINDOW_S / 60) : _('(waiting for a second sample)'));
	},

	handleFlush: function(ev) {
		return callFlush().then(r => {
			ui.addNotification(null, E('p', {}, [
				_('%d flow entries handed back to the network stack.').format(r.flushed) ]), 'info');
			return this.refresh();
		}, e => ui.addNotification(null, E('p', {}, [ _('Flush failed: %s').format(e.message) ]), 'danger'));
	},

	handleResync: function(ev) {
		return callResync().then(r => {
			ui.addNotification(null, E('p', {}, [
				_('Resynced: %d verdicts dropped, %d offloaded flows checked again.').format(r.verdicts_flushed, r.revalidated) ]), 'info');
			return this.refresh();
		}, e => ui.addNotification(null, E('p', {}, [ _('Resync failed: %s').format(e.message) ]), 'danger'));
	}
});

/* a round upper bound for the plot's scale: 1, 2 or 5 times a power of ten */
function niceCeiling(v) {
	if (!(v > 0))
		return 1;
	const p = Math.pow(10, Math.floor(Math.log10(v)));
	for (const m of [ 1, 2, 5, 10 ])
		if (v <= m * p)
			return m * p;
	return 10 * p;
}

/* a table's header row, then its rows or one row saying why there are none */
function fillTable(id, titles, rows, empty) {
	if (!rows.length)
		rows = [ E('tr', { 'class': 'tr placeholder' }, [ E('td', { 'class': 'td' }, [ E('em', {}, [ empty ]) ]) ]) ];
	dom.content(document.getElementById(id), [
		E('tr', { 'class': 'tr table-titles' }, titles.map(t => E('th', { 'class': 'th' }, [ t ])))
	].concat(rows));
}

function section(id, title, children) {
	return E('div', { 'class': 'cbi-section', 'id': id }, [ E('h3', {}, [ title ]) ].concat(children));
}
