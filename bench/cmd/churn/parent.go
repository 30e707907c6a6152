package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/mustersd/muster/bench/internal/benchenv"
	"github.com/mustersd/muster/endpoint"
	"github.com/mustersd/muster/registry"
)

// watcherMetric is etcd's gauge of open watchers.
const watcherMetric = "etcd_debugging_mvcc_watcher_total"

// workers is the number of goroutines that make the churn's changes; more
// than one, so that one slow write does not hold the rate back.
const workers = 32

// fleet is the parent's view of what it registered: per service, the live
// endpoints and the registrar holding each.
type fleet struct {
	regs []*registry.Registrar

	mu   sync.Mutex
	live [][]placed // by service
	next int        // the next unique address number
	rng  *rand.Rand
}

type placed struct {
	ep  endpoint.Endpoint
	reg int
}

// newEndpoint returns a new endpoint of service svc on a random registrar.
// f.mu is held.
func (f *fleet) newEndpoint(svc int) placed {
	n := f.next
	f.next++
	addr := fmt.Sprintf("127.%d.%d.%d:9000", 1+(n>>16)&0x7f, (n>>8)&0xff, n&0xff)
	return placed{ep: endpoint.Endpoint{Service: serviceName(svc), Addr: addr}, reg: f.rng.IntN(len(f.regs))}
}

func runParent(cfg config) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	e, err := benchenv.StartEtcd(ctx, os.TempDir())
	if err != nil {
		return err
	}
	defer e.Stop()
	cli, err := benchenv.Client(e.URL)
	if err != nil {
		return err
	}
	defer cli.Close()

	f := &fleet{live: make([][]placed, cfg.services), rng: rand.New(rand.NewPCG(1, 2))}
	for range cfg.registrars {
		r, err := registry.New(cli, registry.WithTTL(cfg.ttl))
		if err != nil {
			return err
		}
		defer r.Close()
		f.regs = append(f.regs, r)
	}
	// The initial endpoints, one Register call per registrar.
	batches := make([][]endpoint.Endpoint, len(f.regs))
	for s := range cfg.services {
		for range cfg.per {
			p := f.newEndpoint(s)
			f.live[s] = append(f.live[s], p)
			batches[p.reg] = append(batches[p.reg], p.ep)
		}
	}
	start := time.Now()
	for i, b := range batches {
		if err := f.regs[i].Register(ctx, b...); err != nil {
			return fmt.Errorf("initial registration: %w", err)
		}
	}
	fmt.Printf("registered %d endpoints of %d services under %d leases (TTL %v) in %v\n",
		cfg.services*cfg.per, cfg.services, len(f.regs), cfg.ttl, time.Since(start).Round(time.Millisecond))

	child, err := startChild(ctx, cfg, e.URL)
	if err != nil {
		return err
	}
	defer child.close()

	var reports []report
	var churns []churnResult
	ask := func(phase string) (report, error) {
		rep, err := child.check(phase)
		if err != nil {
			return rep, err
		}
		if w, err := benchenv.Metric(watcherMetric); err == nil {
			fmt.Printf("%s: etcd watchers %.0f\n", phase, w)
		}
		reports = append(reports, rep)
		return rep, nil
	}
	if _, err := ask("initial"); err != nil {
		return err
	}
	for round := 1; round <= cfg.rounds; round++ {
		c := f.churn(ctx, cfg)
		churns = append(churns, c)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if _, err := ask("round " + strconv.Itoa(round)); err != nil {
			return err
		}
	}

	fmt.Printf("\nchurn soak: %d services x %d endpoints, %d registrations + %d removals/s for %v per round, %d resolvers on %d etcd clients, %d cores\n\n",
		cfg.services, cfg.per, cfg.rate, cfg.rate, cfg.duration, cfg.resolvers, cfg.etcdClients, runtime.NumCPU())
	fmt.Println("| phase | registered | removed | failed | rate/s | endpoints in etcd | resolvers equal to etcd | converged ms | child RSS MB | child heap MB | goroutines | resolver updates |")
	fmt.Println("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
	ok := true
	for i, r := range reports {
		c := churnResult{}
		if i > 0 {
			c = churns[i-1]
		}
		rate := "-"
		if c.took > 0 {
			rate = fmt.Sprintf("%.0f", float64(c.added)/c.took.Seconds())
		}
		fmt.Printf("| %s | %d | %d | %d | %s | %d | %d/%d | %.1f | %.1f | %.1f | %d | %d |\n",
			r.Phase, c.added, c.removed, c.failed, rate, r.Endpoints, r.Equal, r.Resolvers, r.Converged, r.RSSMB, r.HeapMB, r.Goroutines, r.Updates)
		if r.Equal != r.Resolvers {
			ok = false
			fmt.Printf("  %s: %s\n", r.Phase, r.Mismatch)
		}
		if c.failed > 0 {
			ok = false
		}
	}
	first, last := reports[1], reports[len(reports)-1]
	fmt.Printf("\nchild memory, round 1 -> round %d: RSS %+.1f MB (%+.1f%%), heap %+.1f MB, goroutines %+d\n",
		cfg.rounds, last.RSSMB-first.RSSMB, 100*(last.RSSMB-first.RSSMB)/first.RSSMB, last.HeapMB-first.HeapMB, last.Goroutines-first.Goroutines)
	if !ok {
		return errors.New("a resolver did not equal etcd, or a change failed")
	}
	return nil
}

type churnResult struct {
	added, removed, failed int
	took                   time.Duration
}

// churn removes and registers cfg.rate endpoints per second each, for
// cfg.duration. Each change removes a random endpoint of a random service
// and registers a new endpoint of the same service, so every service keeps
// cfg.per endpoints.
func (f *fleet) churn(ctx context.Context, cfg config) churnResult {
	ctx, cancel := context.WithTimeout(ctx, cfg.duration)
	defer cancel()
	var added, removed, failed atomic.Int64
	jobs := make(chan struct{})
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for range jobs {
				f.mu.Lock()
				s := f.rng.IntN(len(f.live))
				i := f.rng.IntN(len(f.live[s]))
				old := f.live[s][i]
				nw := f.newEndpoint(s)
				f.live[s][i] = nw
				f.mu.Unlock()
				// The write's own context: the last changes finish after
				// the round's time is up.
				wctx, wcancel := context.WithTimeout(context.Background(), 10*time.Second)
				if err := f.regs[old.reg].Deregister(wctx, old.ep); err != nil {
					failed.Add(1)
					fmt.Fprintln(os.Stderr, "deregister:", err)
				} else {
					removed.Add(1)
				}
				if err := f.regs[nw.reg].Register(wctx, nw.ep); err != nil {
					failed.Add(1)
					fmt.Fprintln(os.Stderr, "register:", err)
				} else {
					added.Add(1)
				}
				wcancel()
			}
		})
	}
	start := time.Now()
	tick := time.NewTicker(time.Second / time.Duration(cfg.rate))
	late := 0
loop:
	for {
		select {
		case <-ctx.Done():
			break loop
		case <-tick.C:
			select {
			case jobs <- struct{}{}:
			default:
				late++ // every worker busy: the rate is not held
			}
		}
	}
	tick.Stop()
	close(jobs)
	wg.Wait()
	took := time.Since(start)
	if late > 0 {
		fmt.Fprintf(os.Stderr, "churn: %d changes skipped because every worker was busy\n", late)
	}
	return churnResult{added: int(added.Load()), removed: int(removed.Load()), failed: int(failed.Load()), took: took}
}

// childProc is the resolving child process.
type childProc struct {
	cmd   *exec.Cmd
	stdin interface {
		Write([]byte) (int, error)
		Close() error
	}
	out *bufio.Scanner
}

func startChild(ctx context.Context, cfg config, etcdURL string) (*childProc, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("own executable: %w", err)
	}
	cmd := exec.CommandContext(ctx, exe, "-child", "-etcd", etcdURL,
		"-services", strconv.Itoa(cfg.services), "-resolvers", strconv.Itoa(cfg.resolvers),
		"-etcd-clients", strconv.Itoa(cfg.etcdClients), "-check-timeout", cfg.checkWait.String())
	cmd.Stderr = os.Stderr
	cmd.WaitDelay = 10 * time.Second
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, fmt.Errorf("child stdin: %w", err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, fmt.Errorf("child stdout: %w", err)
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start child: %w", err)
	}
	return &childProc{cmd: cmd, stdin: stdin, out: bufio.NewScanner(stdout)}, nil
}

// check asks the child to compare its resolvers with etcd and returns its
// report.
func (c *childProc) check(phase string) (report, error) {
	var rep report
	if _, err := fmt.Fprintln(c.stdin, phase); err != nil {
		return rep, fmt.Errorf("ask child: %w", err)
	}
	if !c.out.Scan() {
		return rep, fmt.Errorf("child ended before answering %q: %v", phase, c.out.Err())
	}
	if err := json.Unmarshal(c.out.Bytes(), &rep); err != nil {
		return rep, fmt.Errorf("child's report %q: %w", c.out.Text(), err)
	}
	return rep, nil
}

func (c *childProc) close() {
	c.stdin.Close()
	if err := c.cmd.Wait(); err != nil {
		fmt.Fprintln(os.Stderr, "child:", err)
	}
}
