package kratos

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/go-kratos/kratos/v2/registry"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/mustersd/muster/endpoint"
	"github.com/mustersd/muster/internal/keyfmt"
	musterregistry "github.com/mustersd/muster/registry"
)

var (
	_ registry.Registrar = (*Registry)(nil)
	_ registry.Discovery = (*Registry)(nil)
)

// ErrClosed is returned by Register and Deregister after Close.
var ErrClosed = errors.New("kratos: registry closed")

// Registry is a Kratos registry.Registrar and registry.Discovery on Muster.
// Its methods are safe for concurrent use.
//
// The registrar side is one Muster registry.Registrar, created by the first
// Register: one lease for every instance registered through the Registry,
// kept alive and healed in the background (after an etcd outage or a lost
// lease the instances come back by themselves, with no retry limit), and
// revoked by Close. The discovery side shares the process's etcd watch of
// each service (discovery.Subscribe) with every other Watch, GetService and
// Muster resolver of it.
type Registry struct {
	cli *clientv3.Client
	o   options

	mu     sync.Mutex
	reg    *musterregistry.Registrar // nil until the first Register
	closed bool
}

// New returns a Registry on cli. It starts nothing and does not contact
// etcd: the registrar starts with the first Register, and each watch with
// its Watch or GetService.
func New(cli *clientv3.Client, opts ...Option) (*Registry, error) {
	if cli == nil {
		return nil, errors.New("kratos: nil etcd client")
	}
	o := buildOptions(opts)
	for _, ns := range []string{o.namespace, o.kratosNamespace} {
		if err := keyfmt.ValidateNamespace(ns); err != nil {
			return nil, fmt.Errorf("kratos: %w", err)
		}
	}
	if len(o.formats) == 0 {
		return nil, errors.New("kratos: WithFormats: no format")
	}
	for _, f := range o.formats {
		if _, err := keyfmt.Lookup(f); err != nil || f == "" {
			return nil, fmt.Errorf("kratos: WithFormats: %q is not a format (known: %v)", f, keyfmt.Names())
		}
	}
	return &Registry{cli: cli, o: o}, nil
}

// registrar returns the Muster registrar, creating it on first use.
func (r *Registry) registrar() (*musterregistry.Registrar, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return nil, ErrClosed
	}
	if r.reg != nil {
		return r.reg, nil
	}
	opts := []musterregistry.Option{musterregistry.WithLogger(r.o.logger)}
	if r.o.namespace != "" {
		opts = append(opts, musterregistry.WithNamespace(r.o.namespace))
	}
	if r.o.ttl > 0 {
		opts = append(opts, musterregistry.WithTTL(r.o.ttl))
	}
	if r.o.kratosKeys {
		opts = append(opts, musterregistry.WithAlso(musterregistry.Also{Format: keyfmt.Kratos.Name(), Namespace: r.o.kratosNamespace}))
	}
	reg, err := musterregistry.New(r.cli, append(opts, r.o.registry...)...)
	if err != nil {
		return nil, fmt.Errorf("kratos: %w", err)
	}
	r.reg = reg
	return reg, nil
}

// Register implements registry.Registrar: it registers service, in Muster's
// format (and Kratos's, WithKratosKeys), and returns once etcd holds it or
// ctx ends. After a context error the instance stays wanted and is written
// as soon as etcd allows. Registering an instance again (same name and ID)
// updates it.
//
// The instance needs a grpc:// or grpcs:// endpoint, whose host:port is
// the address Muster's clients call, a name Muster accepts as a service
// name (no '/', no white space) and an ID without white space.
func (r *Registry) Register(ctx context.Context, service *registry.ServiceInstance) error {
	e, err := toEndpoint(service)
	if err != nil {
		return err
	}
	if back := toInstance(e); !sameInstance(back, service) {
		r.o.logger.Warn("kratos: the instance is registered without what Muster cannot hold (a version with white space, an empty metadata key)",
			"instance", service.String(), "registered", fmt.Sprintf("%+v", *back))
	}
	reg, err := r.registrar()
	if err != nil {
		return err
	}
	if err := reg.Register(ctx, e); err != nil {
		return fmt.Errorf("kratos: register %s: %w", service, err)
	}
	return nil
}

// Deregister implements registry.Registrar: it deletes the keys of the
// instance with service's name and ID and returns once etcd no longer holds
// them or ctx ends (the deletion is then retried in the background).
// Unknown instances are ignored.
func (r *Registry) Deregister(ctx context.Context, service *registry.ServiceInstance) error {
	if service == nil {
		return errors.New("kratos: nil service instance")
	}
	r.mu.Lock()
	reg, closed := r.reg, r.closed
	r.mu.Unlock()
	if closed {
		return ErrClosed
	}
	if reg == nil {
		return nil
	}
	if err := reg.Deregister(ctx, endpoint.Endpoint{Service: service.Name, ID: service.ID}); err != nil {
		return fmt.Errorf("kratos: deregister %s: %w", service, err)
	}
	return nil
}

// Close revokes the registrar's lease, so that every instance registered
// through r leaves etcd at once, and stops its background work. Watchers
// are not affected: each ends with its Stop or its context. Close is
// idempotent; after it, Register and Deregister return ErrClosed.
func (r *Registry) Close() error {
	r.mu.Lock()
	reg := r.reg
	r.closed = true
	r.reg = nil
	r.mu.Unlock()
	if reg == nil {
		return nil
	}
	return reg.Close()
}

// Status returns the state of the registrar (lease, keys, last error), the
// zero Status before the first Register.
func (r *Registry) Status() musterregistry.Status {
	r.mu.Lock()
	reg := r.reg
	r.mu.Unlock()
	if reg == nil {
		return musterregistry.Status{}
	}
	return reg.Status()
}
