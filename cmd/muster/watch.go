package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/mustersd/muster/discovery"
	"github.com/mustersd/muster/endpoint"
	"github.com/mustersd/muster/internal/keyfmt"
)

func newWatchCmd(a *app) *cobra.Command {
	var asJSON bool
	var format string
	cmd := &cobra.Command{
		Use:   "watch SERVICE",
		Short: "Print a service's instances, then every change, until interrupted",
		Long: `Print the instances of SERVICE, then one line per change (added, removed,
updated) with the etcd revision and the time, until interrupted.

It follows etcd through Muster's discovery watcher: it survives etcd
restarts and compactions, and says when etcd becomes unreachable and when it
is back, keeping the last known instances meanwhile.`,
		Example: `  muster watch order.rpc
  muster watch order.rpc --json | jq -c 'select(.event=="removed")'
  muster watch order.rpc --format go-zero   # what go-zero's Publisher registered`,
		Args: cobra.ExactArgs(1),
		RunE: runE(func(cmd *cobra.Command, args []string) error {
			if err := endpoint.ValidateService(args[0]); err != nil {
				return usageErrorf("%v", err)
			}
			f, ns, err := a.formatAndNamespace(format)
			if err != nil {
				return err
			}
			return a.watch(cmd.Context(), args[0], f, ns, asJSON)
		}),
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print one JSON object per line")
	cmd.Flags().StringVar(&format, "format", "native", "key format to read: "+strings.Join(keyfmt.Names(), ", ")+"; --namespace then defaults to the format's own")
	return cmd
}

// watchEvent is one line of `muster watch --json`.
type watchEvent struct {
	Time     string            `json:"time"`
	Event    string            `json:"event"` // present, added, removed, updated, unreachable, reachable
	Revision int64             `json:"revision"`
	Service  string            `json:"service"`
	ID       string            `json:"id,omitempty"`
	Addr     string            `json:"addr,omitempty"`
	Zone     string            `json:"zone,omitempty"`
	Weight   int               `json:"weight,omitempty"`
	Version  string            `json:"version,omitempty"`
	Tags     map[string]string `json:"tags,omitempty"`
	Error    string            `json:"error,omitempty"`
}

func (a *app) watch(ctx context.Context, service string, f keyfmt.Format, ns string, asJSON bool) error {
	cli, err := a.connect()
	if err != nil {
		return err
	}
	defer cli.Close()
	sub, err := discovery.Subscribe(cli, service, discovery.WithFormat(f.Name()), discovery.WithNamespace(ns), discovery.WithLogger(a.logger))
	if err != nil {
		return failure(err)
	}
	defer sub.Close()

	// The first state decides whether etcd is there at all.
	var first discovery.State
	timeout := time.After(a.global.dialTimeout + 3*time.Second)
	for first.Snapshot.Revision == 0 {
		select {
		case first = <-sub.Updates():
			if first.Snapshot.Revision == 0 && first.Err != nil {
				return a.etcdError(context.DeadlineExceeded)
			}
		case <-timeout:
			return a.etcdError(context.DeadlineExceeded)
		case <-ctx.Done():
			return nil
		}
	}
	p := watchPrinter{w: a.stdout, json: asJSON, service: service}
	p.snapshot(first.Snapshot)
	last := first
	for {
		select {
		case <-ctx.Done():
			return nil
		case st := <-sub.Updates():
			if st.Snapshot.Revision != last.Snapshot.Revision {
				for _, c := range discovery.Diff(last.Snapshot, st.Snapshot) {
					p.change(st.Snapshot.Revision, c.Kind, c.Endpoint)
				}
			}
			switch {
			case st.Err != nil && last.Err == nil:
				p.status(st.Snapshot, "unreachable", st.Err)
			case st.Err == nil && last.Err != nil:
				p.status(st.Snapshot, "reachable", nil)
			}
			last = st
		}
	}
}

type watchPrinter struct {
	w       io.Writer
	json    bool
	service string
}

func now() string { return time.Now().Format("15:04:05.000") }

func (p watchPrinter) emit(ev watchEvent) {
	b, _ := json.Marshal(ev)
	fmt.Fprintf(p.w, "%s\n", b)
}

func (p watchPrinter) snapshot(s discovery.Snapshot) {
	if p.json {
		for _, e := range s.Endpoints {
			p.emit(p.event("present", s.Revision, e))
		}
		return
	}
	fmt.Fprintf(p.w, "%s: %d instance(s) at revision %d\n", p.service, len(s.Endpoints), s.Revision)
	for _, e := range s.Endpoints {
		fmt.Fprintf(p.w, "  %s\n", describe(e))
	}
	fmt.Fprintf(p.w, "watching for changes; Ctrl-C to stop\n")
}

func (p watchPrinter) change(rev int64, kind string, e endpoint.Endpoint) {
	if p.json {
		p.emit(p.event(kind, rev, e))
		return
	}
	fmt.Fprintf(p.w, "%s rev %d %-7s %s\n", now(), rev, kind, describe(e))
}

func (p watchPrinter) status(s discovery.Snapshot, kind string, err error) {
	if p.json {
		ev := watchEvent{Time: time.Now().Format(time.RFC3339Nano), Event: kind, Revision: s.Revision, Service: p.service}
		if err != nil {
			ev.Error = err.Error()
		}
		p.emit(ev)
		return
	}
	if err != nil {
		fmt.Fprintf(p.w, "%s %s; keeping the %d known instance(s)\n", now(), err, len(s.Endpoints))
		return
	}
	fmt.Fprintf(p.w, "%s etcd reachable again\n", now())
}

func (p watchPrinter) event(kind string, rev int64, e endpoint.Endpoint) watchEvent {
	return watchEvent{
		Time: time.Now().Format(time.RFC3339Nano), Event: kind, Revision: rev, Service: e.Service,
		ID: e.ID, Addr: e.Addr, Zone: e.Zone, Weight: e.EffectiveWeight(), Version: e.Version, Tags: e.Tags,
	}
}

// describe is one instance on one line: id, address and metadata.
func describe(e endpoint.Endpoint) string {
	var b strings.Builder
	b.WriteString(e.Addr)
	if e.ID != e.Addr {
		fmt.Fprintf(&b, " id=%s", e.ID)
	}
	if e.Zone != "" {
		fmt.Fprintf(&b, " zone=%s", e.Zone)
	}
	fmt.Fprintf(&b, " weight=%d", e.EffectiveWeight())
	if e.Version != "" {
		fmt.Fprintf(&b, " version=%s", e.Version)
	}
	for _, k := range slices.Sorted(maps.Keys(e.Tags)) {
		fmt.Fprintf(&b, " %s=%s", k, e.Tags[k])
	}
	return b.String()
}
