// Package etcdnaming tests Muster against etcd's own gRPC naming
// (go.etcd.io/etcd/client/v3/naming), both ways: what etcd's
// endpoints.Manager writes, Muster resolves; what Muster registers, etcd's
// resolver resolves. The key layout and the value are the same in both
// (services/<name>/<id> = {"Addr":..,"Metadata":..}), so no option is
// needed on either side.
package etcdnaming
