// Command churn is the churn soak of the fault suite: thousands of endpoints
// across many services, registered and removed at a steady rate while
// hundreds of gRPC ClientConns resolve them through Muster's resolver. At the
// end of each round every ClientConn must hold exactly what etcd holds for
// its service, and the resolving process must not have grown after a second
// identical round.
//
// The parent process runs one embedded etcd and the registrars (registry
// package, one lease each, TTL -ttl): -services x -per endpoints, spread over
// -registrars registrars. It starts one child process of this binary that
// holds -resolvers ClientConns (muster:///svc-NN) on -etcd-clients etcd
// clients, so that every (client, service) pair is an independent etcd watch.
// Each round churns for -duration: every second, -rate endpoints are removed
// and -rate new ones registered, at random. Then the parent asks the child to
// check: the child waits until every ClientConn's resolver state equals
// etcd's contents for its service (read by the child, at a revision after
// the churn stopped) and reports the time that took, its RSS, heap and
// goroutines after a GC.
//
// The ClientConns use a load-balancing policy that records the addresses and
// never connects, so no backend is needed and the addresses need not exist
// (they are unique 127.x.y.z:9000 addresses, never dialled).
//
// Usage:
//
//	cd bench && go run ./cmd/churn [-services 50] [-per 100] [-rate 100] [-duration 60s] [-rounds 2] [-resolvers 200]
package main

import (
	"flag"
	"fmt"
	"os"
	"time"
)

type config struct {
	services    int
	per         int
	rate        int
	duration    time.Duration
	rounds      int
	resolvers   int
	etcdClients int
	registrars  int
	ttl         time.Duration
	checkWait   time.Duration

	// Set in the child only.
	child bool
	etcd  string
}

func main() {
	var cfg config
	flag.IntVar(&cfg.services, "services", 50, "services")
	flag.IntVar(&cfg.per, "per", 100, "endpoints per service, kept steady through the churn")
	flag.IntVar(&cfg.rate, "rate", 100, "registrations per second, and as many removals")
	flag.DurationVar(&cfg.duration, "duration", 60*time.Second, "churn time per round")
	flag.IntVar(&cfg.rounds, "rounds", 2, "identical rounds; the child's memory is compared between the first and the last")
	flag.IntVar(&cfg.resolvers, "resolvers", 200, "gRPC ClientConns in the child, spread evenly over the services")
	flag.IntVar(&cfg.etcdClients, "etcd-clients", 0, "etcd clients in the child (0: resolvers/services, so that every ClientConn has its own watch)")
	flag.IntVar(&cfg.registrars, "registrars", 100, "registrars (leases) holding the endpoints")
	flag.DurationVar(&cfg.ttl, "ttl", 10*time.Second, "lease TTL of the registrars")
	flag.DurationVar(&cfg.checkWait, "check-timeout", 30*time.Second, "how long the resolvers may take to equal etcd after a round")
	flag.BoolVar(&cfg.child, "child", false, "internal: run as the resolving child")
	flag.StringVar(&cfg.etcd, "etcd", "", "internal: the child's etcd endpoint")
	flag.Parse()

	if cfg.services < 1 || cfg.per < 1 || cfg.rate < 1 || cfg.rounds < 1 || cfg.resolvers < 1 || cfg.registrars < 1 {
		fmt.Fprintln(os.Stderr, "churn: -services, -per, -rate, -rounds, -resolvers and -registrars must be at least 1")
		os.Exit(2)
	}
	if cfg.etcdClients == 0 {
		cfg.etcdClients = max(1, cfg.resolvers/cfg.services)
	}
	var err error
	if cfg.child {
		err = runChild(cfg)
	} else {
		err = runParent(cfg)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "churn:", err)
		os.Exit(1)
	}
}

// serviceName is the name of the i-th service.
func serviceName(i int) string { return fmt.Sprintf("svc-%02d", i) }

// report is what the child tells the parent after the initial sync and
// after each round, as one JSON line on stdout.
type report struct {
	Phase      string  `json:"phase"`
	Converged  float64 `json:"converged_ms"` // from the check request until every resolver equalled etcd
	Equal      int     `json:"equal"`        // resolvers equal to etcd
	Resolvers  int     `json:"resolvers"`
	Endpoints  int     `json:"endpoints"` // in etcd, all services
	Mismatch   string  `json:"mismatch,omitempty"`
	RSSMB      float64 `json:"rss_mb"`
	HeapMB     float64 `json:"heap_mb"`
	Goroutines int     `json:"goroutines"`
	Updates    int64   `json:"updates"` // resolver states delivered so far, all ClientConns
}
