// Package interop holds no code: this module's packages are tests of Muster
// against the systems it reads and writes the formats of, using their own
// libraries where they can be fetched, each against a real embedded etcd
// and real gRPC servers on 127.0.0.1:
//
//   - gozero: go-zero's discov.Publisher, discov.Subscriber and zrpc client
//     (github.com/zeromicro/go-zero), both ways, and a fleet mixing
//     go-zero, etcd naming and Muster registrations;
//   - etcdnaming: etcd's naming/endpoints Manager and naming/resolver
//     (go.etcd.io/etcd/client/v3/naming), both ways;
//   - kitex: Kitex's registry-etcd (github.com/kitex-contrib/registry-etcd),
//     whose module cannot be fetched here: its keys and values are written
//     and read exactly as its source does.
//
// It is a module of its own (github.com/mustersd/muster/interop, with
// replace github.com/mustersd/muster => ../) so that these peers stay out
// of the core module's go.mod. docs/migrating.md quotes its tests.
package interop
