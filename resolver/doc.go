// Package resolver is a gRPC resolver for Muster services: target
// "muster:///order.rpc" resolves to the instances of order.rpc registered in
// etcd, and follows them as they come and go.
//
//	cc, err := grpc.NewClient("muster:///order.rpc",
//		grpc.WithResolvers(resolver.NewBuilder(cli)),
//		grpc.WithDefaultServiceConfig(`{"loadBalancingConfig":[{"round_robin":{}}]}`),
//		grpc.WithTransportCredentials(insecure.NewCredentials()))
//
// Build never blocks on etcd. Every ClientConn of a service in a process
// shares one etcd watch (see package discovery). While etcd is unreachable
// the resolver reports the error and keeps the last endpoints in force, so
// RPCs keep flowing to them.
//
// A target may override the builder's namespace and format with query
// parameters: "muster:///order.rpc?namespace=prod&format=native".
//
// Each resolver.Endpoint carries the instance's metadata as an attribute;
// balancers read it with FromAttributes, Weight and Zone.
package resolver
