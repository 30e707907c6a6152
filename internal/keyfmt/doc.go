// Package keyfmt holds the wire formats Muster reads from and writes to etcd:
// how an endpoint becomes a key and a value, and back.
//
// The native format is the one etcd's own gRPC naming uses, so that etcd's
// resolver at etcd:///services/order sees Muster's endpoints and Muster reads
// endpoints written by etcd's endpoints.Manager:
//
//	services/order.rpc/10.0.0.7:8080 = {"Addr":"10.0.0.7:8080","Metadata":{"weight":10,"zone":"eu-1a"}}
//
// Decoding is total: any bytes in, an endpoint or an error out, never a panic.
// Formats of other systems implement the same Format interface.
package keyfmt
