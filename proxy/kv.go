package proxy

import (
	"context"
	"errors"
	"io"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/grpc"
)

// waitForReady makes forwarded requests wait, within their deadline, for
// the connection to etcd to be ready, as etcd's own client does, instead of
// failing while it reconnects.
var waitForReady = grpc.WaitForReady(true)

// kvServer forwards KV to etcd. Every read is linearizable: Serializable
// is cleared on each Range, including those inside a Txn, so that no
// client is answered from a member that lags or from a cache.
type kvServer struct {
	pb.UnimplementedKVServer
	c pb.KVClient
	m *metrics
}

func (s *kvServer) Range(ctx context.Context, r *pb.RangeRequest) (*pb.RangeResponse, error) {
	r.Serializable = false
	s.m.ranges.Inc()
	return s.c.Range(ctx, r, waitForReady)
}

func (s *kvServer) RangeStream(r *pb.RangeRequest, stream pb.KV_RangeStreamServer) error {
	r.Serializable = false
	s.m.ranges.Inc()
	up, err := s.c.RangeStream(stream.Context(), r, waitForReady)
	if err != nil {
		return err
	}
	for {
		resp, err := up.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if err := stream.Send(resp); err != nil {
			return err
		}
	}
}

func (s *kvServer) Put(ctx context.Context, r *pb.PutRequest) (*pb.PutResponse, error) {
	return s.c.Put(ctx, r, waitForReady)
}

func (s *kvServer) DeleteRange(ctx context.Context, r *pb.DeleteRangeRequest) (*pb.DeleteRangeResponse, error) {
	return s.c.DeleteRange(ctx, r, waitForReady)
}

func (s *kvServer) Txn(ctx context.Context, r *pb.TxnRequest) (*pb.TxnResponse, error) {
	linearizeTxn(r)
	return s.c.Txn(ctx, r, waitForReady)
}

func (s *kvServer) Compact(ctx context.Context, r *pb.CompactionRequest) (*pb.CompactionResponse, error) {
	return s.c.Compact(ctx, r, waitForReady)
}

// linearizeTxn clears Serializable on every range of r, nested txns
// included (etcd serves a read-only txn whose ranges are all serializable
// from the local member).
func linearizeTxn(r *pb.TxnRequest) {
	for _, ops := range [][]*pb.RequestOp{r.Success, r.Failure} {
		for _, op := range ops {
			switch v := op.Request.(type) {
			case *pb.RequestOp_RequestRange:
				if v.RequestRange != nil {
					v.RequestRange.Serializable = false
				}
			case *pb.RequestOp_RequestTxn:
				if v.RequestTxn != nil {
					linearizeTxn(v.RequestTxn)
				}
			}
		}
	}
}
