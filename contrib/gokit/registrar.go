package gokit

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/go-kit/kit/sd"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/mustersd/muster/endpoint"
	"github.com/mustersd/muster/registry"
)

var _ sd.Registrar = (*Registrar)(nil)

// Registrar is a go-kit sd.Registrar for one instance, on a Muster
// registry.Registrar: one lease, kept alive and healed in the background
// (after an etcd outage or a lost lease it registers the instance again by
// itself), revoked by Stop. Its methods are safe for concurrent use.
type Registrar struct {
	reg     *registry.Registrar
	ep      endpoint.Endpoint
	log     *slog.Logger
	timeout time.Duration
}

// NewRegistrar returns a Registrar of ep (ep.Service and ep.Addr are
// required; see endpoint.Endpoint) that writes through cli. It does not
// contact etcd until Register. WithGoKitPrefix also publishes the instance
// for go-kit's etcdv3 Instancers; WithRegistryOptions passes options to
// registry.New.
func NewRegistrar(cli *clientv3.Client, ep endpoint.Endpoint, opts ...Option) (*Registrar, error) {
	o := buildOptions(opts)
	ep = ep.Normalize()
	if err := ep.Validate(); err != nil {
		return nil, fmt.Errorf("gokit: %w", err)
	}
	ropts := []registry.Option{registry.WithLogger(o.logger)}
	if o.goKitPrefix != "" {
		also, err := registry.ParseAlso("go-kit:" + o.goKitPrefix)
		if err != nil {
			return nil, fmt.Errorf("gokit: go-kit prefix %q: %w", o.goKitPrefix, err)
		}
		ropts = append(ropts, registry.WithAlso(also))
	}
	reg, err := registry.New(cli, append(ropts, o.registry...)...)
	if err != nil {
		return nil, fmt.Errorf("gokit: %w", err)
	}
	return &Registrar{reg: reg, ep: ep, log: o.logger.With("service", ep.Service, "addr", ep.Addr), timeout: o.timeout}, nil
}

// Register implements sd.Registrar: it puts the instance in etcd and waits
// until etcd holds it, at most the timeout (WithTimeout). go-kit's interface
// returns no error: a failure is logged, and the registration is made in the
// background as soon as etcd allows.
func (r *Registrar) Register() {
	ctx, cancel := context.WithTimeout(context.Background(), r.timeout)
	defer cancel()
	if err := r.reg.Register(ctx, r.ep); err != nil {
		r.log.Error("gokit: register: not in etcd yet; still trying in the background", "err", err)
		return
	}
	r.log.Info("gokit: registered")
}

// Deregister implements sd.Registrar: it deletes the instance's keys, waiting
// at most the timeout; after it the deletion is retried in the background.
// The Registrar stays usable: Register puts the instance back.
func (r *Registrar) Deregister() {
	ctx, cancel := context.WithTimeout(context.Background(), r.timeout)
	defer cancel()
	if err := r.reg.Deregister(ctx, r.ep); err != nil {
		r.log.Error("gokit: deregister: still in etcd; still trying in the background", "err", err)
		return
	}
	r.log.Info("gokit: deregistered")
}

// Stop revokes the lease, so the instance leaves etcd if it is still there,
// and ends the background work. It is idempotent; after it Register and
// Deregister only log registry.ErrClosed.
func (r *Registrar) Stop() { _ = r.reg.Close() }

// Status returns the state of the registrar underneath: the lease, the
// number of endpoints in etcd, the last error.
func (r *Registrar) Status() registry.Status { return r.reg.Status() }
