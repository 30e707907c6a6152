// Command muster is Muster's command-line tool: it shows what Muster does,
// runs a development etcd, registers endpoints by hand and lists what is
// registered.
//
//	muster demo                                  # a rolling restart under load, on a throwaway etcd
//	muster dev                                   # an embedded etcd at 127.0.0.1:2379, metrics at :2381
//	muster register order.rpc 127.0.0.1:8080     # keep an endpoint registered until Ctrl-C
//	muster ls [SERVICE] [--json]                 # list the registered endpoints
//
// Every command that talks to etcd takes the global flags --endpoints,
// --namespace, --user, --password, --cacert, --cert, --key and --dial-timeout,
// each of which can also be set through the environment (MUSTER_ENDPOINTS,
// MUSTER_NAMESPACE, ...); a flag on the command line wins over the
// environment.
//
// Exit codes: 0 on success (also after Ctrl-C ends a long-running command
// cleanly), 1 when something fails at run time (etcd unreachable, a port in
// use, a request of muster demo), 2 for usage errors (a bad flag, argument or
// value).
package main
