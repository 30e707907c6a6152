// Command fleet is the fleet-cost benchmark of the discovery server: what a
// fleet of client processes costs etcd, and how fast one change reaches
// every ClientConn of the fleet, for four ways of resolving a service:
//
//	muster        muster:///bench.rpc, Muster's resolver straight to etcd
//	etcd          etcd:///services/bench.rpc, etcd's naming resolver straight to etcd
//	xds           xds:///bench.rpc through Muster's xDS server (package xds)
//	etcd-proxy    etcd's naming resolver through `muster proxy` (package proxy)
//
// The parent process runs one embedded etcd and nothing else that uses CPU
// while changes are measured, so its CPU time is etcd's. The xDS server and
// the proxy each run in a child process of their own. For each system and
// each fleet size P (-procs, default 1,10,50) it starts P client processes
// with -conns ClientConns each (default 20), waits until all of them hold
// the service's initial endpoints, then makes -changes changes (an endpoint
// added, then the oldest removed) and times each from just before the etcd
// write until the last ClientConn of the last process has it. Clocks are
// compared across processes with the wall clock of this one machine.
//
// The ClientConns use a load-balancing policy that records the addresses
// the resolver hands over and never connects: no backend is needed. Under
// xDS the policy comes from the server (Cluster.load_balancing_policy,
// muster_p2c first); the client processes register the recording policy
// under that name, so that it is what the xDS machinery hands the
// endpoints to.
//
// Usage:
//
//	cd bench && go run ./cmd/fleet [-procs 1,10,50] [-conns 20] [-changes 20] [-systems muster,etcd,xds,etcd-proxy]
package main

import (
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// The systems, in the order they run.
const (
	sysMuster = "muster"
	sysEtcd   = "etcd"
	sysXDS    = "xds"
	sysProxy  = "etcd-proxy"
)

var allSystems = []string{sysMuster, sysEtcd, sysXDS, sysProxy}

// service is the service every ClientConn resolves.
const service = "bench.rpc"

type config struct {
	procs   []int
	conns   int
	changes int
	systems []string
	wait    time.Duration
	timeout time.Duration

	// Child processes only.
	role   string // "client", "xds" or "proxy"
	system string
	etcd   string // etcd's URL, or the proxy's host:port
	xds    string // the xDS server's host:port
}

func main() {
	var (
		cfg     config
		procs   string
		systems string
	)
	flag.StringVar(&procs, "procs", "1,10,50", "comma-separated numbers of client processes")
	flag.IntVar(&cfg.conns, "conns", 20, "ClientConns per client process")
	flag.IntVar(&cfg.changes, "changes", 20, "changes measured per system and fleet size (an addition, then a removal)")
	flag.StringVar(&systems, "systems", strings.Join(allSystems, ","), "which systems, in order")
	flag.DurationVar(&cfg.wait, "change-timeout", 30*time.Second, "how long one change may take to reach every ClientConn")
	flag.DurationVar(&cfg.timeout, "timeout", 15*time.Minute, "bound on the whole run")
	flag.StringVar(&cfg.role, "role", "", "internal: the role of a child process")
	flag.StringVar(&cfg.system, "system", "", "internal: a client process's system")
	flag.StringVar(&cfg.etcd, "etcd", "", "internal: where a child reaches etcd")
	flag.StringVar(&cfg.xds, "xds", "", "internal: the xDS server of an xds client process")
	flag.Parse()

	var err error
	switch cfg.role {
	case "":
		for _, s := range strings.Split(procs, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(s))
			if err != nil || n < 1 {
				fmt.Fprintf(os.Stderr, "fleet: -procs %q: want positive numbers\n", procs)
				os.Exit(2)
			}
			cfg.procs = append(cfg.procs, n)
		}
		for _, s := range strings.Split(systems, ",") {
			s = strings.TrimSpace(s)
			if !contains(allSystems, s) {
				fmt.Fprintf(os.Stderr, "fleet: -systems: unknown system %q (have %s)\n", s, strings.Join(allSystems, ", "))
				os.Exit(2)
			}
			cfg.systems = append(cfg.systems, s)
		}
		if cfg.conns < 1 || cfg.changes < 1 {
			fmt.Fprintln(os.Stderr, "fleet: -conns and -changes must be at least 1")
			os.Exit(2)
		}
		err = runParent(cfg)
	case "client":
		err = runClient(cfg)
	case "xds", "proxy":
		err = runServer(cfg)
	default:
		err = fmt.Errorf("unknown -role %q", cfg.role)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "fleet %s: %v\n", cfg.role, err)
		os.Exit(1)
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
