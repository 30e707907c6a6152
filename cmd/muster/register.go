package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"
	"time"

	"github.com/spf13/cobra"

	"github.com/mustersd/muster/endpoint"
	"github.com/mustersd/muster/registry"
)

// registerOptions are the flags of `muster register`.
type registerOptions struct {
	id      string
	weight  int
	zone    string
	version string
	tags    []string
	also    []string
	ttl     time.Duration
}

func newRegisterCmd(a *app) *cobra.Command {
	var o registerOptions
	cmd := &cobra.Command{
		Use:   "register SERVICE ADDR",
		Short: "Register an endpoint and keep it registered until Ctrl-C",
		Long: `Register one endpoint of SERVICE at ADDR (host:port) under a lease, keep the
lease alive, and deregister (revoke the lease) on Ctrl-C or SIGTERM.

If the process dies without deregistering, the endpoint vanishes when its
lease expires, --ttl after the last keepalive.`,
		Example: `  muster register order.rpc 127.0.0.1:8080
  muster register order.rpc 10.0.0.7:8080 --zone eu-1a --version 1.4.2 --tag canary=true --ttl 5s
  muster register order.rpc 10.0.0.7:8080 --also go-zero --also kitex:order   # found by go-zero and Kitex clients too`,
		Args: func(_ *cobra.Command, args []string) error {
			if len(args) != 2 {
				return fmt.Errorf("want SERVICE and ADDR, got %d argument(s); e.g. muster register order.rpc 127.0.0.1:8080", len(args))
			}
			return nil
		},
		RunE: runE(func(cmd *cobra.Command, args []string) error {
			e, err := o.endpoint(args[0], args[1])
			if err != nil {
				return err
			}
			var also []registry.Also
			for _, s := range o.also {
				al, err := registry.ParseAlso(s)
				if err != nil {
					return usageErrorf("--also: %v", strings.TrimPrefix(err.Error(), "registry: "))
				}
				also = append(also, al)
			}
			return a.register(cmd.Context(), e, o.ttl, also)
		}),
	}
	f := cmd.Flags()
	f.StringVar(&o.id, "id", "", "instance id (default ADDR)")
	f.IntVar(&o.weight, "weight", 0, fmt.Sprintf("relative share of traffic, 1..%d (default %d)", endpoint.MaxWeight, endpoint.DefaultWeight))
	f.StringVar(&o.zone, "zone", "", "failure domain of the instance, e.g. eu-1a")
	f.StringVar(&o.version, "version", "", "version of the software the instance runs")
	f.StringArrayVar(&o.tags, "tag", nil, "label `key=value`; repeat for more tags")
	f.StringArrayVar(&o.also, "also", nil, "also publish in another system's format, `FORMAT[:KEY]` (go-zero, kitex, go-kit, kratos, go-micro; e.g. go-zero:dev/order.rpc); repeatable")
	f.DurationVar(&o.ttl, "ttl", registry.DefaultTTL, fmt.Sprintf("lease TTL: how long the endpoint outlives this process if it dies; whole seconds, at least %v", registry.MinTTL))
	return cmd
}

// endpoint checks the arguments and flags and returns the endpoint they
// describe. Its errors are usage errors that name the field at fault.
func (o *registerOptions) endpoint(service, addr string) (endpoint.Endpoint, error) {
	if err := endpoint.ValidateService(service); err != nil {
		return endpoint.Endpoint{}, usageErrorf("%v", err)
	}
	if err := endpoint.ValidateAddr(addr); err != nil {
		return endpoint.Endpoint{}, usageErrorf("%v", err)
	}
	if o.ttl < registry.MinTTL || o.ttl%time.Second != 0 {
		return endpoint.Endpoint{}, usageErrorf("ttl %v: want a whole number of seconds, at least %v", o.ttl, registry.MinTTL)
	}
	tags, err := parseTags(o.tags)
	if err != nil {
		return endpoint.Endpoint{}, usageErrorf("%v", err)
	}
	e := endpoint.Endpoint{
		Service: service,
		ID:      o.id,
		Addr:    addr,
		Zone:    o.zone,
		Version: o.version,
		Weight:  o.weight,
		Tags:    tags,
	}.Normalize()
	if err := e.Validate(); err != nil {
		return endpoint.Endpoint{}, usageErrorf("%v", err)
	}
	return e, nil
}

// parseTags parses "key=value" flags. A key may be given once; the value may
// be empty and may contain '='.
func parseTags(flags []string) (map[string]string, error) {
	if len(flags) == 0 {
		return nil, nil
	}
	tags := make(map[string]string, len(flags))
	for _, f := range flags {
		k, v, ok := strings.Cut(f, "=")
		switch {
		case !ok:
			return nil, fmt.Errorf("tag %q: want key=value", f)
		case k == "":
			return nil, fmt.Errorf("tag %q: empty key", f)
		}
		if _, dup := tags[k]; dup {
			return nil, fmt.Errorf("tag %q: key %q given twice", f, k)
		}
		tags[k] = v
	}
	return tags, nil
}

// register registers e with a lease of ttl and keeps it registered until ctx
// ends, then revokes the lease.
func (a *app) register(ctx context.Context, e endpoint.Endpoint, ttl time.Duration, also []registry.Also) error {
	cli, err := a.connect()
	if err != nil {
		return err
	}
	defer cli.Close()
	// Until the endpoint is registered, a failure is reported in one line
	// below, not also in the registrar's log.
	var registered atomic.Bool
	r, err := registry.New(cli,
		registry.WithAlso(also...),
		registry.WithTTL(ttl),
		registry.WithNamespace(a.global.namespace),
		registry.WithLogger(slog.New(gatedHandler{h: a.logger.Handler(), open: &registered})))
	if err != nil {
		return err
	}
	rctx, cancel := context.WithTimeout(ctx, a.global.dialTimeout)
	err = r.Register(rctx, e)
	cancel()
	if err != nil {
		cause := r.Status().LastError
		_ = r.Close() // revokes the lease if one was granted
		if ctx.Err() != nil {
			return errors.New("interrupted before the endpoint was registered")
		}
		if cause != nil {
			if _, ok := unreachable(cause); !ok {
				return cause // e.g. authentication or permission
			}
		}
		return a.etcdError(err)
	}
	registered.Store(true)
	st := r.Status()
	fmt.Fprintf(a.stdout, "registered %s (lease %x, ttl %v); Ctrl-C to deregister\n", e, st.LeaseID, st.TTL)

	<-ctx.Done()
	if err := r.Close(); err != nil {
		return fmt.Errorf("deregistering %s: %w; it vanishes when its lease expires, within %v", e, err, ttl)
	}
	fmt.Fprintf(a.stdout, "deregistered %s\n", e)
	return nil
}

// gatedHandler passes records below slog.LevelError to h only once open is
// set. Handlers derived from it share the gate.
type gatedHandler struct {
	h    slog.Handler
	open *atomic.Bool
}

func (g gatedHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return (l >= slog.LevelError || g.open.Load()) && g.h.Enabled(ctx, l)
}

func (g gatedHandler) Handle(ctx context.Context, r slog.Record) error { return g.h.Handle(ctx, r) }

func (g gatedHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return gatedHandler{h: g.h.WithAttrs(attrs), open: g.open}
}

func (g gatedHandler) WithGroup(name string) slog.Handler {
	return gatedHandler{h: g.h.WithGroup(name), open: g.open}
}
