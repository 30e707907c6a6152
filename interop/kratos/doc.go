// Package kratos tests Muster against Kratos (github.com/go-kratos/kratos/v2,
// v2.8.3, the newest the module proxy serves) and the format of its etcd
// registry (github.com/go-kratos/kratos/contrib/registry/etcd/v2, read at
// v2.9.2; that module cannot be fetched here). Values are built with
// Kratos's own registry.ServiceInstance, and written and read exactly as
// the etcd registry's source does:
//
//	registry.go  registerKey:  fmt.Sprintf("%s/%s/%s", namespace, service.Name, service.ID)
//	             namespace:    "/microservices" unless etcd.Namespace(...)
//	             registerWithKV: Grant(ttl, 15s by default), Put(key, value, WithLease)
//	             GetService:   Get(namespace+"/"+name, WithPrefix), unmarshal each, skip si.Name != name
//	service.go   marshal:      json.Marshal(si); unmarshal: json.Unmarshal(data, &si)
//	watcher.go   Watch(prefix, WithPrefix, WithRev(0), WithKeysOnly); every event: GetService again
//
// The servers are Kratos's own gRPC transport servers, and the clients
// Kratos's own gRPC transport client and resolver.
package kratos
