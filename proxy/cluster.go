package proxy

import (
	"context"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
)

// clusterServer answers MemberList with the proxy as the only member, so
// that clients syncing their endpoints keep talking to the proxy, and
// forwards member changes to etcd.
type clusterServer struct {
	pb.UnimplementedClusterServer
	p *Proxy
	c pb.ClusterClient
}

func (s *clusterServer) MemberList(ctx context.Context, r *pb.MemberListRequest) (*pb.MemberListResponse, error) {
	resp, err := s.c.MemberList(ctx, r, waitForReady)
	if err != nil {
		return nil, err
	}
	var urls []string
	if a := s.p.addr(); a != "" {
		urls = []string{"http://" + a}
	}
	return &pb.MemberListResponse{
		Header:  resp.Header,
		Members: []*pb.Member{{Name: "muster-proxy", ClientURLs: urls}},
	}, nil
}

func (s *clusterServer) MemberAdd(ctx context.Context, r *pb.MemberAddRequest) (*pb.MemberAddResponse, error) {
	return s.c.MemberAdd(ctx, r, waitForReady)
}

func (s *clusterServer) MemberRemove(ctx context.Context, r *pb.MemberRemoveRequest) (*pb.MemberRemoveResponse, error) {
	return s.c.MemberRemove(ctx, r, waitForReady)
}

func (s *clusterServer) MemberUpdate(ctx context.Context, r *pb.MemberUpdateRequest) (*pb.MemberUpdateResponse, error) {
	return s.c.MemberUpdate(ctx, r, waitForReady)
}

func (s *clusterServer) MemberPromote(ctx context.Context, r *pb.MemberPromoteRequest) (*pb.MemberPromoteResponse, error) {
	return s.c.MemberPromote(ctx, r, waitForReady)
}
