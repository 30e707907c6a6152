// Package kitex tests Muster against Kitex's etcd registry
// (github.com/kitex-contrib/registry-etcd, whose code now lives in
// github.com/cloudwego-contrib/cwgo-pkg/registry/etcd/etcdkitex). Kitex's
// modules cannot be fetched here, so the tests write keys and values
// exactly as its registry does and read them exactly as its resolver does,
// with its instanceInfo struct copied field for field and tag for tag:
//
//	key:   kitex/registry-etcd/<service>/<host:port>   (under a lease, TTL 60s by default)
//	value: json.Marshal(&instanceInfo{Network: addr.Network(), Address: "host:port", Weight: info.Weight, Tags: info.Tags})
//	       = {"network":"tcp","address":"10.0.0.7:8888","weight":10,"tags":null}
//
// and the resolver, for service s, lists the prefix "kitex/registry-etcd/s",
// json.Unmarshals each value into instanceInfo (skipping what does not
// decode), and takes a weight <= 0 as 10.
package kitex
