package proxy

import (
	"context"
	"errors"
	"io"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
)

// leaseServer forwards Lease to etcd with each client's own token. A
// keepalive stream is relayed one to one to an upstream keepalive stream:
// each keepalive a client sends reaches etcd when it sends it, so a lease
// expires one TTL after its client's last keepalive, as with etcd itself
// (etcd's grpcproxy lease proxy keeps leases alive on its own schedule, up
// to twice the TTL: etcd-io/etcd#13031; it renews them over its client's
// one shared keepalive stream, without the clients' tokens, and with etcd
// authentication on our keepalives through it failed at once; it also keeps
// a watch of its own on etcd to follow leader loss).
type leaseServer struct {
	pb.UnimplementedLeaseServer
	p *Proxy
	c pb.LeaseClient
}

func (s *leaseServer) LeaseGrant(ctx context.Context, r *pb.LeaseGrantRequest) (*pb.LeaseGrantResponse, error) {
	return s.c.LeaseGrant(ctx, r, waitForReady)
}

func (s *leaseServer) LeaseRevoke(ctx context.Context, r *pb.LeaseRevokeRequest) (*pb.LeaseRevokeResponse, error) {
	return s.c.LeaseRevoke(ctx, r, waitForReady)
}

func (s *leaseServer) LeaseTimeToLive(ctx context.Context, r *pb.LeaseTimeToLiveRequest) (*pb.LeaseTimeToLiveResponse, error) {
	return s.c.LeaseTimeToLive(ctx, r, waitForReady)
}

func (s *leaseServer) LeaseLeases(ctx context.Context, r *pb.LeaseLeasesRequest) (*pb.LeaseLeasesResponse, error) {
	return s.c.LeaseLeases(ctx, r, waitForReady)
}

func (s *leaseServer) LeaseKeepAlive(stream pb.Lease_LeaseKeepAliveServer) error {
	ctx, cancel := context.WithCancel(stream.Context())
	defer cancel()
	stop := context.AfterFunc(s.p.ctx, cancel)
	defer stop()
	if !s.p.track(2) {
		return errClosing
	}
	up, err := s.c.LeaseKeepAlive(withToken(ctx, clientToken(ctx)), waitForReady)
	if err != nil {
		s.p.wg.Add(-2)
		return err
	}
	errc := make(chan error, 2)
	go func() { // client -> etcd; ends when the handler has returned
		defer s.p.wg.Done()
		for {
			req, err := stream.Recv()
			if err == nil {
				err = up.Send(req)
			}
			if err != nil {
				errc <- err
				return
			}
		}
	}()
	go func() { // etcd -> client
		defer s.p.wg.Done()
		for {
			resp, err := up.Recv()
			if err == nil {
				err = stream.Send(resp)
			}
			if err != nil {
				errc <- err
				return
			}
		}
	}()
	select {
	case err = <-errc:
	case <-ctx.Done():
	}
	if s.p.ctx.Err() != nil {
		return errClosing
	}
	if errors.Is(err, io.EOF) || err == nil {
		return nil
	}
	return err
}
