// SPDX-License-Identifier: GPL-2.0-only
/*
 * A stand-in for LuCI's client runtime, for the ebpfw browser tests (tests/test_luci.py).
 *
 * It gives a view what luci-base gives it, with the shapes documented by LuCI: the global L,
 * E(), _() and N_(), String.prototype.format (cbi.js), and the classes a view requires:
 * baseclass, view, dom, poll, request, rpc (ubus JSON-RPC), uci, ui and form (Map,
 * NamedSection, TypedSection, Flag, Value, DummyValue). It is written here, small, and covers
 * what an app's view uses; themes, menus, the apply/rollback dance and translations are not
 * in it. A test loads the view in real LuCI as well when OpenWrt's userland is on the machine.
 */
(function(window, document) {
'use strict';

const env = Object.assign({ pollinterval: 5, rpctimeout: 20 }, window.LUCI_ENV || {});
const classes = {};

/* -- classes ------------------------------------------------------------------------------- */

const Class = function() {};
Object.assign(Class, {
	extend(props) {
		const Parent = this;
		const Child = function() {
			if (!(this instanceof Child))
				throw new TypeError('Constructor must not be called without "new"');
			if (typeof this.__init__ == 'function')
				this.__init__.apply(this, arguments);
		};
		Child.prototype = Object.create(Parent.prototype);
		for (const key of Object.keys(props))
			Object.defineProperty(Child.prototype, key,
				{ value: props[key], writable: true, configurable: true });
		Object.defineProperty(Child.prototype, 'constructor', { value: Child, writable: true });
		for (const k of [ 'extend', 'singleton', 'instantiate', 'isSubclass' ])
			Child[k] = Class[k];
		return Child;
	},
	singleton(props, ...args) {
		return this.extend(props).instantiate(args);
	},
	instantiate(args) {
		return new (Function.prototype.bind.apply(this, [ null ].concat(args || [])))();
	},
	isSubclass(c) {
		return typeof c == 'function' && c.prototype instanceof this;
	}
});
Class.prototype = {
	varargs(args, offset, ...extra) {
		return extra.concat(Array.prototype.slice.call(args, offset));
	},
	/* calls the next definition of `key` up the chain from the one running now */
	super(key, callArgs) {
		const depth = this.__superDepth || (this.__superDepth = {});
		const skip = (depth[key] || 0) + 1;
		let owner = null, seen = 0;
		for (let p = Object.getPrototypeOf(this); p; p = Object.getPrototypeOf(p))
			if (Object.prototype.hasOwnProperty.call(p, key) && seen++ == skip) {
				owner = p;
				break;
			}
		if (owner == null)
			return null;
		if (arguments.length < 2)
			return owner[key];
		depth[key] = skip;
		try {
			return owner[key].apply(this, callArgs || []);
		}
		finally {
			depth[key] = skip - 1;
		}
	}
};

/* -- dom ----------------------------------------------------------------------------------- */

const registry = {};
let nextRef = 1;

const DOM = Class.singleton({
	elem(e) {
		return e != null && typeof e == 'object' && 'nodeType' in e;
	},
	parse(html) {
		const doc = new DOMParser().parseFromString(html, 'text/html');
		return doc.body.firstChild;
	},
	matches(node, sel) {
		return this.elem(node) && node.matches ? node.matches(sel) : false;
	},
	parent(node, sel) {
		return this.elem(node) && node.closest ? node.closest(sel) : null;
	},
	/* arrays become text nodes and elements, a lone string is markup (as LuCI does) */
	append(node, children) {
		if (!this.elem(node))
			return null;
		if (Array.isArray(children)) {
			for (const c of children)
				if (this.elem(c))
					node.appendChild(c);
				else if (c != null)
					node.appendChild(document.createTextNode(String(c)));
			return node.lastChild;
		}
		if (typeof children == 'function')
			return this.append(node, children(node));
		if (this.elem(children))
			return node.appendChild(children);
		if (children != null) {
			node.innerHTML = String(children);
			return node.lastChild;
		}
		return null;
	},
	content(node, children) {
		if (!this.elem(node))
			return null;
		for (const ref of node.querySelectorAll('[data-idref]'))
			delete registry[ref.getAttribute('data-idref')];
		while (node.firstChild)
			node.removeChild(node.firstChild);
		return this.append(node, children);
	},
	attr(node, key, val) {
		if (!this.elem(node))
			return;
		const attrs = (typeof key == 'object' && key != null) ? key : { [key]: val };
		for (const k in attrs) {
			const v = attrs[k];
			if (v == null)
				continue;
			if (typeof v == 'function')
				node.addEventListener(k, v);
			else if (typeof v == 'object')
				node.setAttribute(k, JSON.stringify(v));
			else
				node.setAttribute(k, v);
		}
	},
	create(html, attr, data) {
		if (!(attr instanceof Object) || Array.isArray(attr))
			[ data, attr ] = [ attr, null ];
		let el;
		if (Array.isArray(html)) {
			el = document.createDocumentFragment();
			for (const h of html)
				el.appendChild(this.create(h));
		}
		else if (this.elem(html))
			el = html;
		else if (html.charAt(0) == '<')
			el = this.parse(html);
		else
			el = document.createElement(html);
		if (!el)
			return null;
		this.attr(el, attr);
		this.append(el, data);
		return el;
	},
	data(node, key, val) {
		if (!node || !node.getAttribute)
			return null;
		let id = node.getAttribute('data-idref');
		if (arguments.length > 2 && key != null && val != null) {
			if (id == null) {
				id = String(nextRef++);
				node.setAttribute('data-idref', id);
				registry[id] = {};
			}
			return (registry[id][key] = val);
		}
		if (id == null || !registry[id])
			return null;
		return (arguments.length > 1) ? (registry[id][key] ?? null) : registry[id];
	},
	bindClassInstance(node, inst) {
		return this.data(node, '_class', inst);
	},
	findClassInstance(node) {
		for (; node; node = node.parentNode) {
			const inst = this.data(node, '_class');
			if (inst instanceof Class)
				return inst;
		}
		return null;
	},
	callClassMethod(node, method, ...args) {
		const inst = this.findClassInstance(node);
		return (inst && typeof inst[method] == 'function') ? inst[method](...args) : null;
	},
	isEmpty(node, ignoreFn) {
		for (let c = node && node.firstElementChild; c; c = c.nextElementSibling)
			if (!c.classList.contains('hidden') && !(ignoreFn && ignoreFn(c)))
				return false;
		return true;
	}
});

/* -- request and poll ---------------------------------------------------------------------- */

const Response = Class.extend({
	__init__(status, statusText, url, headers, text, duration) {
		Object.assign(this, { ok: status >= 200 && status <= 299, status, statusText, url,
			duration, headers: { get: name => headers.get(name) } });
		this.responseText = text;
	},
	text() { return this.responseText; },
	json() { return JSON.parse(this.responseText); }
});

const Request = Class.singleton({
	request(url, opts) {
		opts = opts || {};
		const started = Date.now();
		const init = { method: opts.method || 'GET', credentials: 'same-origin', headers: {} };
		if (opts.content != null) {
			init.body = (typeof opts.content == 'object') ? JSON.stringify(opts.content) : String(opts.content);
			init.headers['Content-Type'] = (typeof opts.content == 'object') ? 'application/json' : 'text/plain';
		}
		const ctrl = new AbortController();
		const timer = opts.timeout ? setTimeout(() => ctrl.abort(), opts.timeout) : null;
		init.signal = ctrl.signal;
		return fetch(url, init).then(res => res.text().then(text =>
			new Response(res.status, res.statusText, res.url, res.headers, text, Date.now() - started)))
			.finally(() => clearTimeout(timer));
	},
	get(url, opts) { return this.request(url, Object.assign({}, opts, { method: 'GET' })); },
	post(url, data, opts) {
		return this.request(url, Object.assign({}, opts, { method: 'POST', content: data }));
	}
});

const Poll = Class.singleton({
	queue: [],
	add(fn, interval) {
		if (interval == null || interval <= 0)
			interval = env.pollinterval;
		if (typeof fn != 'function' || isNaN(interval))
			throw new TypeError('Invalid argument to LuCI.poll.add()');
		if (this.queue.some(e => e.fn === fn))
			return false;
		this.queue.push({ fn, interval: interval >>> 0, idle: true });
		if (!this.active())
			this.start();
		return true;
	},
	remove(fn) {
		const len = this.queue.length;
		this.queue = this.queue.filter(e => e.fn !== fn);
		if (!this.queue.length)
			this.stop();
		return this.queue.length != len;
	},
	start() {
		if (this.active())
			return false;
		this.tick = 0;
		if (this.queue.length) {
			this.timer = window.setInterval(() => this.step(), 1000);
			this.step();       /* the first round right away, then every second */
			document.dispatchEvent(new CustomEvent('poll-start'));
		}
		return true;
	},
	stop() {
		if (!this.active())
			return false;
		window.clearInterval(this.timer);
		this.timer = null;
		document.dispatchEvent(new CustomEvent('poll-stop'));
		return true;
	},
	active() {
		return this.timer != null;
	},
	/* each function runs every `interval` ticks (tick 0 included), never twice at once */
	step() {
		for (const e of this.queue) {
			if (this.tick % e.interval != 0 || !e.idle)
				continue;
			e.idle = false;
			Promise.resolve().then(() => e.fn()).finally(() => { e.idle = true; });
		}
		this.tick++;
	}
});

/* -- view ---------------------------------------------------------------------------------- */

const View = Class.extend({
	__init__() {
		const vp = document.getElementById('view');
		DOM.content(vp, E('div', { 'class': 'spinning' }, [ _('Loading view…') ]));
		return Promise.resolve(this.load())
			.then(data => this.render(data))
			.then(nodes => {
				DOM.content(vp, nodes);
				DOM.append(vp, this.addFooter());
				document.dispatchEvent(new CustomEvent('luci-view-rendered'));
			}).catch(L.error);
	},
	load() {},
	render() {},
	handleSave(ev) {
		const maps = document.getElementById('maincontent').querySelectorAll('.cbi-map');
		return Promise.all(Array.from(maps, m => DOM.callClassMethod(m, 'save')));
	},
	handleSaveApply(ev, mode) {
		return this.handleSave(ev).then(() => classes.ui.changes.apply(mode == '0'));
	},
	handleReset(ev) {
		const maps = document.getElementById('maincontent').querySelectorAll('.cbi-map');
		return Promise.all(Array.from(maps, m => DOM.callClassMethod(m, 'reset')));
	},
	/* Save & Apply, Save, Reset: disabled when every form on the page is read-only */
	addFooter() {
		let hasmap = false, readonly = true;
		for (const el of document.getElementById('view').querySelectorAll('.cbi-map')) {
			const m = DOM.findClassInstance(el);
			if (m) {
				hasmap = true;
				readonly = readonly && !!m.readonly;
			}
		}
		if (!hasmap)
			readonly = !L.hasViewPermission();
		if (!this.handleSaveApply && !this.handleSave && !this.handleReset)
			return E([]);
		const ui = classes.ui;
		const btn = (fn, cls, label) => this[fn] ? E('button', {
			'class': cls, 'disabled': readonly ? '' : null,
			'click': ui.createHandlerFn(this, fn)
		}, [ label ]) : '';
		return E('div', { 'class': 'cbi-page-actions' }, [
			btn('handleSaveApply', 'btn cbi-button cbi-button-apply important', _('Save & Apply')), ' ',
			btn('handleSave', 'btn cbi-button cbi-button-save', _('Save')), ' ',
			btn('handleReset', 'btn cbi-button cbi-button-reset', _('Reset'))
		]);
	}
});

/* -- L ------------------------------------------------------------------------------------- */

const LuCI = Class.extend({
	__init__() {
		this.env = env;
	},
	raise(type, fmt, ...args) {
		const e = (type instanceof Error) ? type : new (window[type] || Error)(
			fmt ? String.prototype.format.apply(fmt, args) : 'Unspecified error');
		if (!(type instanceof Error))
			e.name = type || 'Error';
		if (window.console && console.debug)
			console.debug(e);
		throw e;
	},
	error(type, fmt, ...args) {
		try {
			L.raise(type, fmt, ...args);
		}
		catch (e) {
			if (!e.reported) {
				if (classes.ui)
					classes.ui.addNotification(e.name || _('Runtime error'), E('pre', {}, [ e.message ]), 'danger');
				e.reported = true;
			}
			throw e;
		}
	},
	bind(fn, self, ...args) {
		return Function.prototype.bind.call(fn, self, ...args);
	},
	/* loads resources/<name with / for .>.js: its 'require' lines name the classes its
	 * factory receives, in order, after window, document and L */
	require(name, from) {
		from = from || [];
		if (classes[name] != null) {
			if (from.indexOf(name) != -1)
				L.raise('DependencyError', 'Circular dependency: class "%s" depends on "%s"', name, from.join('" which depends on "'));
			return Promise.resolve(classes[name]);
		}
		const url = '%s/%s.js'.format(env.base_url, name.replace(/\./g, '/'));
		classes[name] = Request.get(url).then(res => {
			if (!res.ok)
				L.raise('NetworkError', 'HTTP error %d while loading class file "%s"', res.status, url);
			const source = res.text();
			const deps = directives(source).filter(d => d.require);
			return Promise.all(deps.map(d => L.require(d.require, [ name ].concat(from)))).then(instances => {
				let factory;
				try {
					factory = new Function('window', 'document', 'L', ...deps.map(d => d.as),
						source + '\n//# sourceURL=' + url);
				}
				catch (e) {
					L.raise('SyntaxError', '%s\n  in %s', e.message, url);
				}
				const Made = factory(window, document, L, ...instances);
				if (!Class.isSubclass(Made))
					L.error('TypeError', '"%s" factory yields invalid constructor', name);
				return (classes[name] = new Made());
			});
		});
		return classes[name];
	},
	hasViewPermission() {
		const spec = env.nodespec;
		if (spec == null || typeof spec != 'object' || !spec.satisfied)
			return null;
		return !spec.readonly;
	},
	resolveDefault(value, def) {
		return Promise.resolve(value).catch(() => def);
	},
	isObject(v) {
		return v != null && typeof v == 'object';
	},
	toArray(v) {
		if (v == null)
			return [];
		if (Array.isArray(v))
			return v;
		if (typeof v == 'object')
			return [ v ];
		const s = String(v).trim();
		return s ? s.split(/\s+/) : [];
	},
	sortedKeys(obj, key) {
		return Object.keys(obj || {}).sort((a, b) => {
			const x = key ? obj[a][key] : a, y = key ? obj[b][key] : b;
			return (x > y) - (x < y);
		});
	},
	path(prefix, parts) {
		const url = [ prefix || '' ];
		for (const p of parts)
			if (/^(?:[a-zA-Z0-9_.%,;-]+\/)*[a-zA-Z0-9_.%,;-]+$/.test(p))
				url.push('/' + p);
		return url.length == 1 ? url[0] + '/' : url.join('');
	},
	url(...parts) { return this.path(env.scriptname, parts); },
	resource(...parts) { return this.path(env.resource, parts); },
	media(...parts) { return this.path(env.media, parts); },
	location() { return this.path(env.scriptname, env.requestpath || []); },
	Class: Class,
	dom: DOM,
	view: View,
	Poll: Poll,
	Request: Request
});

/* the leading string statements of a class file: 'use strict' and 'require NAME [as ALIAS]' */
function directives(source) {
	const out = [];
	const token = /^\s*(?:\/\/[^\n]*\n|\/\*[\s\S]*?\*\/|(['"])((?:\\.|(?!\1).)*)\1\s*;?)/;
	let rest = source, m;
	while ((m = token.exec(rest)) != null) {
		rest = rest.substring(m[0].length);
		if (m[1] == null)
			continue;
		const req = /^require[ \t]+(\S+)(?:[ \t]+as[ \t]+([a-zA-Z_]\S*))?$/.exec(m[2]);
		if (req)
			out.push({ require: req[1], as: req[2] || req[1].replace(/[^a-zA-Z0-9_]/g, '_') });
		else if (m[2] != 'use strict')
			break;
	}
	return out;
}

const L = new LuCI();
window.L = L;
window.E = function() { return DOM.create.apply(DOM, arguments); };
window._ = function(s) { return (env.i18n && env.i18n[s]) || s; };
window.N_ = function(n, singular, plural) { return _((n == 1) ? singular : plural); };

/* -- String.prototype.format (the subset of cbi.js views use) ------------------------------ */

String.prototype.format = function(...args) {
	const esc = (s, chars) => (typeof s == 'string' || s instanceof String)
		? String(s).replace(chars, c => '&#' + c.charCodeAt(0) + ';') : '';
	let n = 0;
	return this.replace(/%('.|0|\x20)?(-)?(\d+)?(\.\d+)?([%bcdufoxXsqhjtm])/g,
		(all, pad, left, width, prec, type) => {
			if (type == '%')
				return '%';
			if (n >= args.length)
				return all;
			const v = args[n++];
			let s;
			switch (type) {
			case 'd': s = ~~(+v || 0); break;
			case 'u': s = ~~Math.abs(+v || 0); break;
			case 'f': s = prec ? (+v || 0).toFixed(+prec.substring(1)) : (+v || 0); break;
			case 'b': s = (+v || 0).toString(2); break;
			case 'o': s = (+v || 0).toString(8); break;
			case 'c': s = String.fromCharCode(+v || 0); break;
			case 'x': s = (+v || 0).toString(16); break;
			case 'X': s = (+v || 0).toString(16).toUpperCase(); break;
			case 'h': s = esc(v, /[&"'<>]/g); break;
			case 'q': s = esc(v, /["']/g); break;
			case 'j': s = JSON.stringify(v); break;
			case 't': {
				let t = Math.floor(+v || 0);
				const d = Math.floor(t / 86400), h = Math.floor(t / 3600) % 24, m = Math.floor(t / 60) % 60;
				t %= 60;
				s = d ? '%dd %dh %dm %ds'.format(d, h, m, t) : '%dh %dm %ds'.format(h, m, t);
				break;
			}
			case 'm': {
				/* %<base>.<digits>m: 1234567 with %1000.2m is "1.23 M", 2048 with %1024.2m "2.00 Ki" */
				const base = width ? +width : 1000, digits = prec ? ~~(10 * +('0' + prec)) : 2;
				const units = [ ' ', ' K', ' M', ' G', ' T', ' P', ' E' ];
				let val = +v || 0, i = 0;
				for (; i < units.length && val > base; i++)
					val /= base;
				return i ? val.toFixed(digits) + units[i] + (base == 1024 ? 'i' : '') : val + ' ';
			}
			default: s = v;
			}
			s = String(s);
			const fill = pad ? (pad.charAt(0) == "'" ? pad.charAt(1) : pad) : ' ';
			while (width && s.length < +width)
				s = left ? s + ' ' : fill + s;
			return s;
		});
};
String.format = (fmt, ...args) => String.prototype.format.apply(fmt, args);

/* -- rpc ----------------------------------------------------------------------------------- */

let rpcId = 1;
const Rpc = Class.extend({
	getSessionID() { return env.sessionid; },
	setSessionID(sid) { env.sessionid = sid; },
	getBaseURL() { return env.ubuspath; },
	setBaseURL(url) { env.ubuspath = url; },
	getStatusText(code) {
		return [ _('Command OK'), _('Invalid command'), _('Invalid argument'), _('Method not found'),
			_('Resource not found'), _('No data received'), _('Permission denied'), _('Request timeout'),
			_('Not supported'), _('Unspecified error'), _('Connection lost') ][code] || _('Unknown error code');
	},
	post(msg) {
		return Request.post(env.ubuspath, msg, { timeout: env.rpctimeout * 1000 }).then(res => {
			if (!res.ok)
				L.raise('RPCError', 'RPC call to %s failed with HTTP error %d: %s', env.ubuspath, res.status, res.statusText);
			return res.json();
		});
	},
	list(...objects) {
		return this.post({ jsonrpc: '2.0', id: rpcId++, method: 'list', params: objects.length ? objects : undefined })
			.then(msg => msg.result);
	},
	/* fn(...args): positional args map to `params`; the reply goes through expect and filter */
	declare(opts) {
		return (...args) => {
			const params = {};
			(opts.params || []).forEach((name, i) => { params[name] = args[i]; });
			const priv = args.slice((opts.params || []).length);
			const msg = { jsonrpc: '2.0', id: rpcId++, method: 'call',
				params: [ env.sessionid, opts.object, opts.method, params ] };
			return this.post(msg).then(reply => {
				if (reply == null || reply.jsonrpc != '2.0')
					L.raise('RPCError', 'RPC call to %s/%s returned invalid message frame', opts.object, opts.method);
				if (reply.error && reply.error.code)
					L.raise('RPCError', 'RPC call to %s/%s failed with error %d: %s',
						opts.object, opts.method, reply.error.code, reply.error.message || '?');
				let ret = reply.result;
				if (Array.isArray(ret)) {
					if (opts.reject && ret[0] !== 0)
						L.raise('RPCError', 'RPC call to %s/%s failed with ubus code %d: %s',
							opts.object, opts.method, ret[0], this.getStatusText(ret[0]));
					ret = (ret.length > 1) ? ret[1] : ret[0];
				}
				if (opts.expect) {
					const key = Object.keys(opts.expect)[0], def = opts.expect[key];
					if (ret != null && key != '')
						ret = ret[key];
					if (ret == null || Object.prototype.toString.call(ret) != Object.prototype.toString.call(def))
						ret = def;
				}
				return (typeof opts.filter == 'function') ? opts.filter(ret, params, ...priv) : ret;
			});
		};
	}
});

/* -- uci ----------------------------------------------------------------------------------- */

const Uci = Class.extend({
	__init__() {
		this.state = { values: {}, changes: {} };
		this.callGet = classes.rpc.declare({ object: 'uci', method: 'get', params: [ 'config' ], expect: { values: {} }, reject: true });
		this.callSet = classes.rpc.declare({ object: 'uci', method: 'set', params: [ 'config', 'section', 'values' ], reject: true });
		this.callDelete = classes.rpc.declare({ object: 'uci', method: 'delete', params: [ 'config', 'section', 'options' ], reject: true });
		this.callApply = classes.rpc.declare({ object: 'uci', method: 'apply', params: [ 'timeout', 'rollback' ], reject: false });
	},
	load(configs) {
		const wanted = L.toArray(configs).filter(c => !this.state.values[c]);
		return Promise.all(wanted.map(c => this.callGet(c).then(values => { this.state.values[c] = values; })))
			.then(() => L.toArray(configs));
	},
	unload(configs) {
		for (const c of L.toArray(configs)) {
			delete this.state.values[c];
			delete this.state.changes[c];
		}
	},
	sections(config, type, cb) {
		const all = Object.values(this.state.values[config] || {})
			.filter(s => type == null || s['.type'] == type)
			.sort((a, b) => a['.index'] - b['.index'])
			.map(s => Object.assign({}, s, (this.state.changes[config] || {})[s['.name']]));
		if (typeof cb == 'function')
			all.forEach(s => cb(s, s['.name']));
		return all;
	},
	get(config, sid, option) {
		const changed = ((this.state.changes[config] || {})[sid] || {});
		if (option != null && Object.prototype.hasOwnProperty.call(changed, option))
			return changed[option];
		const s = (this.state.values[config] || {})[sid];
		if (s == null)
			return null;
		return (option == null) ? Object.assign({}, s, changed) : (s[option] ?? null);
	},
	get_first(config, type, option) {
		const s = this.sections(config, type)[0];
		return s ? this.get(config, s['.name'], option) : null;
	},
	set(config, sid, option, value) {
		if (this.get(config, sid, option) === value)
			return;
		const c = this.state.changes[config] || (this.state.changes[config] = {});
		(c[sid] || (c[sid] = {}))[option] = value;
	},
	unset(config, sid, option) {
		this.set(config, sid, option, null);
	},
	/* stages the changes with rpcd (uci set), then reads the configs again */
	save() {
		const tasks = [];
		for (const config in this.state.changes)
			for (const sid in this.state.changes[config]) {
				const values = {}, gone = [];
				for (const [ k, v ] of Object.entries(this.state.changes[config][sid]))
					(v == null) ? gone.push(k) : (values[k] = v);
				if (Object.keys(values).length)
					tasks.push(this.callSet(config, sid, values));
				if (gone.length)
					tasks.push(this.callDelete(config, sid, gone));
			}
		const configs = Object.keys(this.state.changes);
		return Promise.all(tasks).then(() => {
			this.unload(configs);
			return this.load(configs);
		});
	},
	apply(timeout) {
		return this.callApply(timeout, false).then(code => code || 0);
	}
});

/* -- ui ------------------------------------------------------------------------------------ */

const Ui = Class.extend({
	addNotification(title, children, ...cls) {
		const main = document.getElementById('maincontent') || document.body;
		const msg = E('div', { 'class': 'alert-message fade-in', 'role': 'alert' }, [
			E('div', { 'class': 'right' }, [
				E('button', { 'class': 'btn', 'click': ev => msg.remove() }, [ _('Dismiss') ]) ]),
			title ? E('h4', {}, [ title ]) : '',
			E('div', {}, Array.isArray(children) ? children : [ children ])
		]);
		for (const c of cls)
			msg.classList.add(c);
		main.insertBefore(msg, main.firstChild);
		return msg;
	},
	showModal(title, children, ...cls) {
		let overlay = document.getElementById('modal_overlay');
		if (!overlay) {
			overlay = E('div', { 'id': 'modal_overlay' }, [ E('div', { 'class': 'modal', 'role': 'dialog' }) ]);
			document.body.appendChild(overlay);
		}
		const dlg = overlay.firstChild;
		DOM.content(dlg, [ title ? E('h4', {}, [ title ]) : '' ].concat(Array.isArray(children) ? children : [ children ]));
		dlg.className = [ 'modal' ].concat(cls).join(' ');
		document.body.classList.add('modal-overlay-active');
		return dlg;
	},
	hideModal() {
		document.body.classList.remove('modal-overlay-active');
	},
	showIndicator(id, label, handler, style) {
		return true;
	},
	hideIndicator(id) {
		return true;
	},
	/* a click handler that disables its button while the returned promise runs */
	createHandlerFn(ctx, fn, ...args) {
		if (typeof fn == 'string')
			fn = ctx[fn];
		if (typeof fn != 'function')
			return null;
		return ev => {
			const btn = ev && ev.currentTarget;
			const res = fn.call(ctx, ...args, ev);
			if (res && typeof res.then == 'function' && btn) {
				btn.classList.add('spinning');
				btn.disabled = true;
				res.finally(() => {
					btn.classList.remove('spinning');
					btn.disabled = false;
				});
			}
			return res;
		};
	},
	changes: {
		/* commits what the page staged and reloads it (LuCI also offers a rollback here) */
		apply(checked) {
			return classes.uci.apply(10).then(code => {
				if (code == 5) {
					classes.ui.addNotification(null, E('p', {}, [ _('There are no changes to apply') ]), 'info');
					return;
				}
				if (code != 0)
					L.raise('RPCError', 'uci apply failed with ubus code %d', code);
				document.dispatchEvent(new CustomEvent('uci-applied'));
				window.location.reload();
			});
		}
	}
});

/* -- form ---------------------------------------------------------------------------------- */

const AbstractElement = Class.extend({
	__init__(title, description) {
		this.title = title || '';
		this.description = description || '';
		this.children = [];
	},
	append(obj) {
		this.children.push(obj);
	},
	/* section() and option(): a child constructed with this element as its first argument */
	child(ChildClass, args) {
		const c = ChildClass.instantiate([ this ].concat(args));
		this.append(c);
		return c;
	},
	loadChildren(sid) {
		return Promise.all(this.children.map(c => c.load(sid)));
	},
	renderChildren(sid) {
		return Promise.all(this.children.map(c => c.render(sid)));
	}
});

const FormMap = AbstractElement.extend({
	__init__(config, title, description) {
		AbstractElement.prototype.__init__.call(this, title, description);
		this.config = config;
		this.data = classes.uci;
		this.readonly = null;
	},
	section(SectionClass, ...args) {
		return this.child(SectionClass, args);
	},
	/* read-only unless the session may write the config (rpcd's session access) */
	load() {
		const access = (this.readonly == null)
			? classes.rpc.declare({ object: 'session', method: 'access', params: [ 'scope', 'object', 'function' ],
				expect: { access: false } })('uci', this.config, 'write')
			: Promise.resolve(true);
		return Promise.all([ access, this.data.load(this.config) ]).then(([ writable ]) => {
			if (writable === false)
				this.readonly = true;
			return this.loadChildren();
		});
	},
	render() {
		return this.load().then(() => this.renderChildren()).then(nodes => {
			const el = E('div', { 'class': 'cbi-map', 'id': 'cbi-' + this.config }, [
				this.title ? E('h2', {}, [ this.title ]) : '',
				this.description ? E('div', { 'class': 'cbi-map-descr' }, [ this.description ]) : ''
			].concat(nodes));
			DOM.bindClassInstance(el, this);
			this.node = el;
			return el;
		});
	},
	parse() {
		return Promise.all(this.children.map(s => s.parse()));
	},
	save() {
		if (this.readonly)
			return Promise.resolve();
		return this.parse().then(() => this.data.save());
	},
	reset() {
		const old = this.node;
		return this.render().then(el => {
			if (old && old.parentNode)
				old.parentNode.replaceChild(el, old);
			return el;
		});
	}
});

const AbstractSection = AbstractElement.extend({
	__init__(map, sectiontype, title, description) {
		AbstractElement.prototype.__init__.call(this, title, description);
		this.map = map;
		this.sectiontype = sectiontype;
		this.anonymous = false;
	},
	option(OptionClass, ...args) {
		return this.child(OptionClass, args);
	},
	cfgsections() {
		return this.map.data.sections(this.map.config, this.sectiontype).map(s => s['.name']);
	},
	load() {
		return Promise.all(this.cfgsections().map(sid => this.loadChildren(sid)));
	},
	parse() {
		return Promise.all(this.cfgsections().map(sid => Promise.all(this.children.map(o => o.parse(sid)))));
	},
	render() {
		return Promise.all(this.cfgsections().map(sid => this.renderChildren(sid).then(nodes =>
			E('div', { 'class': 'cbi-section-node', 'id': 'cbi-%s-%s'.format(this.map.config, sid) }, nodes))))
			.then(nodes => E('div', { 'class': 'cbi-section', 'id': 'cbi-%s-%s'.format(this.map.config, this.sectiontype) }, [
				this.title ? E('h3', {}, [ this.title ]) : '',
				this.description ? E('div', { 'class': 'cbi-section-descr' }, [ this.description ]) : ''
			].concat(nodes)));
	}
});

const TypedSection = AbstractSection.extend({});

const NamedSection = AbstractSection.extend({
	__init__(map, sid, sectiontype, title, description) {
		AbstractSection.prototype.__init__.call(this, map, sectiontype, title, description);
		this.section = sid;
	},
	cfgsections() {
		return this.map.data.get(this.map.config, this.section) ? [ this.section ] : [];
	}
});

const AbstractValue = AbstractElement.extend({
	__init__(section, option, title, description) {
		AbstractElement.prototype.__init__.call(this, title, description);
		this.section = section;
		this.option = option;
		this.map = section.map;
		this.rmempty = true;
		this.default = null;
		this.readonly = null;
	},
	cbid(sid) {
		return 'cbid.%s.%s.%s'.format(this.map.config, sid, this.option);
	},
	load(sid) {
		return Promise.resolve();
	},
	cfgvalue(sid) {
		return this.map.data.get(this.map.config, sid, this.option);
	},
	textvalue(sid) {
		const v = this.cfgvalue(sid);
		return (v == null) ? this.default : v;
	},
	isReadonly() {
		return !!(this.readonly || this.map.readonly);
	},
	renderWidget(sid) {
		return E('div', {}, [ String(this.textvalue(sid) ?? '') ]);
	},
	formvalue(sid) {
		return null;
	},
	parse(sid) {
		if (this.isReadonly())
			return Promise.resolve();
		const v = this.formvalue(sid);
		if (v == null || (v === '' && this.rmempty))
			this.map.data.unset(this.map.config, sid, this.option);
		else
			this.map.data.set(this.map.config, sid, this.option, v);
		return Promise.resolve();
	},
	render(sid) {
		return Promise.resolve(this.renderWidget(sid)).then(widget => E('div', {
			'class': 'cbi-value', 'id': 'cbi-%s-%s-%s'.format(this.map.config, sid, this.option),
			'data-name': this.option
		}, [
			E('label', { 'class': 'cbi-value-title', 'for': 'widget.' + this.cbid(sid) }, [ this.title ]),
			E('div', { 'class': 'cbi-value-field' }, [
				widget,
				this.description ? E('div', { 'class': 'cbi-value-description' }, [ this.description ]) : ''
			])
		]));
	}
});

const Value = AbstractValue.extend({
	renderWidget(sid) {
		return E('input', { 'type': 'text', 'class': 'cbi-input-text', 'id': 'widget.' + this.cbid(sid),
			'value': this.textvalue(sid) ?? '', 'disabled': this.isReadonly() ? '' : null });
	},
	formvalue(sid) {
		const el = document.getElementById('widget.' + this.cbid(sid));
		return el ? el.value : null;
	}
});

const Flag = AbstractValue.extend({
	__init__(...args) {
		AbstractValue.prototype.__init__.apply(this, args);
		this.enabled = '1';
		this.disabled = '0';
		this.default = this.disabled;
	},
	/* as ui.Checkbox: the box has a generated id and names its widget in data-widget-id */
	renderWidget(sid) {
		const id = 'cb' + (nextRef++).toString(16);
		return E('div', { 'class': 'cbi-checkbox', 'id': this.cbid(sid) }, [
			E('input', { 'type': 'checkbox', 'id': id, 'value': this.enabled,
				'data-widget-id': 'widget.' + this.cbid(sid),
				'checked': (this.textvalue(sid) == this.enabled) ? '' : null,
				'disabled': this.isReadonly() ? '' : null }),
			E('label', { 'for': id })
		]);
	},
	formvalue(sid) {
		const el = document.querySelector(`input[data-widget-id="widget.${this.cbid(sid)}"]`);
		return el ? (el.checked ? this.enabled : this.disabled) : null;
	},
	parse(sid) {
		if (this.isReadonly())
			return Promise.resolve();
		const v = this.formvalue(sid);
		if (v == null)
			return Promise.resolve();
		if (v == this.disabled && this.rmempty && this.cfgvalue(sid) == null)
			return Promise.resolve();
		this.map.data.set(this.map.config, sid, this.option, v);
		return Promise.resolve();
	}
});

const DummyValue = AbstractValue.extend({
	parse(sid) {
		return Promise.resolve();
	}
});

/* -- registry: what 'require NAME' gives a class file ------------------------------------ */

/* baseclass and view are classes (a view file returns view.extend({...})); the others are the
 * instances their files would make */
Object.assign(classes, {
	baseclass: Class,
	view: View,
	dom: DOM,
	poll: Poll,
	request: Request
});
classes.rpc = new Rpc();
classes.uci = new Uci();
classes.ui = new Ui();
classes.form = new (Class.extend({
	Map: FormMap, TypedSection, NamedSection, Value, Flag, DummyValue,
	AbstractSection, AbstractValue
}))();
})(window, document);
