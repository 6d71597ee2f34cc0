// SPDX-License-Identifier: GPL-2.0-only
//
// For the check against real LuCI (tests/test_luci.py): on a real ubusd, the object `ebpfw`
// exists while the daemon's control socket accepts, and each call is carried to it, so the
// daemon's api.Api.call answers as it does for ubus. Also `luci getFeatures`, which LuCI's
// client asks at start and which comes from LuCI's rpcd plugin (not built here): no features.
//
// ucode ebpfw-bridge.uc CONTROL_SOCKET METHODS_JSON   (METHODS_JSON: {"method": {"arg": type}})
// Prints the session's uhttpd URL once both objects are published.

'use strict';

import * as ubus from 'ubus';
import * as uloop from 'uloop';
import * as socket from 'socket';
import { stdout } from 'fs';

const path = ARGV[0];
const signatures = json(ARGV[1]);
const STATUS_INVALID_ARGUMENT = 2, STATUS_METHOD_NOT_FOUND = 3, STATUS_UNKNOWN_ERROR = 9;

function ask(method, args) {
	const conn = socket.connect({ path });
	if (!conn)
		return null;
	conn.send(sprintf('%J\n', { method, args }));
	let buf = '';
	while (!match(buf, /\n$/)) {
		const chunk = conn.recv(65536);
		if (!chunk)
			break;
		buf += chunk;
	}
	conn.close();
	return json(buf);
}

function alive() {
	const conn = socket.connect({ path });
	if (!conn)
		return false;
	conn.close();
	return true;
}

uloop.init();
const bus = ubus.connect();
bus.publish('luci', { getFeatures: { call: (req) => req.reply({}), args: {} } });

// one closure per method (a for-in loop variable is shared by the closures made in it)
function forward(name) {
	return function(req) {
		const answer = ask(name, req.args);
		if (answer == null)
			return req.reply(null, STATUS_UNKNOWN_ERROR);
		if (answer.error != null)
			return req.reply(null, match(answer.error, /argument/) ? STATUS_INVALID_ARGUMENT
				: match(answer.error, /unknown method/) ? STATUS_METHOD_NOT_FOUND : STATUS_UNKNOWN_ERROR);
		return req.reply(answer.result);
	};
}

const methods = {};
for (let name, args in signatures)
	methods[name] = { args, call: forward(name) };

// registered while the daemon runs, as the daemon's own object would be
let obj = null;
function follow() {
	const up = alive();
	if (up && !obj)
		obj = bus.publish('ebpfw', methods);
	else if (!up && obj) {
		obj.remove();
		obj = null;
	}
	return up;
}

follow();
stdout.write(getenv('OWRT_HTTP_URL') + '\n');
stdout.flush();
uloop.timer(200, function() { follow(); this.set(200); });
uloop.run();
