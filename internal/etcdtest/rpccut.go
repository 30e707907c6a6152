package etcdtest

import (
	"context"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// rpcCutter ends the client RPCs of one server instance when the member is
// stopped.
//
// embed.Etcd.Close stops the client gRPC server gracefully and can wait up
// to the request timeout (5s + 2 election timeouts) for open RPCs. Watch and
// lease keep-alive streams only end when their context does; measured here,
// about one in ten stops of a leader with an open watch and keep-alive
// stalled for 6s. The interceptors give every RPC a context that Stop
// cancels first; a cut RPC fails with codes.Unavailable, like a dropped
// connection, so clients retry (watches and keep-alives reconnect, to
// another endpoint if they have one) instead of treating it as a final
// error.
type rpcCutter struct {
	ctx    context.Context
	cancel context.CancelFunc
}

func newRPCCutter() *rpcCutter {
	ctx, cancel := context.WithCancel(context.Background())
	return &rpcCutter{ctx: ctx, cancel: cancel}
}

// cut cancels all current and future RPCs of the instance.
func (c *rpcCutter) cut() { c.cancel() }

// bind returns a context cancelled when parent is or when the instance is
// cut, and its release function.
func (c *rpcCutter) bind(parent context.Context) (context.Context, func()) {
	ctx, cancel := context.WithCancel(parent)
	stop := context.AfterFunc(c.ctx, cancel)
	return ctx, func() {
		stop()
		cancel()
	}
}

func (c *rpcCutter) result(err error) error {
	if err != nil && c.ctx.Err() != nil {
		return status.Error(codes.Unavailable, "etcdtest: member stopped")
	}
	return err
}

func (c *rpcCutter) serverOptions() []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.ChainUnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
			ctx, release := c.bind(ctx)
			defer release()
			resp, err := handler(ctx, req)
			return resp, c.result(err)
		}),
		grpc.ChainStreamInterceptor(func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
			ctx, release := c.bind(ss.Context())
			defer release()
			return c.result(handler(srv, &cutStream{ServerStream: ss, ctx: ctx}))
		}),
	}
}

type cutStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s *cutStream) Context() context.Context { return s.ctx }
