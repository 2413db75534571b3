package ctl

// vagentd is the one arbiter of agents while it runs: it knows which
// requests are in flight and drains an agent before stopping it. So
// vagentctl sends what would cut requests through vagentd's control socket
// when vagentd answers there, and drives systemd over D-Bus itself only
// when vagentd is not running:
//
//	status   GET  /vagent/v1/status  (adds the gateway's view: state, requests in flight, queued)
//	switch   POST /vagent/v1/switch  (vagentd drains the agents it evicts)
//	stop     POST /vagent/v1/stop    (vagentd stops routing to the agent and drains it first)
//	restart  POST /vagent/v1/stop, then a start here as below
//	start    here over D-Bus: a start never evicts, so it cannot cut a
//	         request, and the per-GPU transition lock orders it against
//	         vagentd's own switches
//
// apply, logs, gpu and test never go through vagentd. The client and the
// wire types are controlapi's, shared with vagentd.
