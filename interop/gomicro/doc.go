// Package gomicro tests Muster against the format of go-micro's etcd
// registry (registry/etcd/etcd.go in go-micro.dev/v5, and in the v4
// plugins as github.com/go-micro/plugins/v4/registry/etcd). go-micro's
// modules cannot be fetched here, so the tests build values with go-micro's
// registry types copied member for member and in order (registry.Service,
// Node, Endpoint and Value from registry/registry.go), and write and read
// them exactly as etcd.go does:
//
//	prefix      = "/micro/registry/"
//	nodePath    = path.Join(prefix, strings.Replace(service, "/", "-", -1), strings.Replace(node.Id, "/", "-", -1))
//	servicePath = path.Join(prefix, strings.Replace(service, "/", "-", -1))
//	encode      = json.Marshal(&registry.Service{Name, Version, Metadata, Endpoints, Nodes: []*registry.Node{node}})
//	registerNode: Grant(ttl) when a TTL is given, Put(nodePath, encode(service), WithLease)
//	Deregister:  Delete(nodePath)
//	GetService:  Get(servicePath(name)+"/", WithPrefix, WithSerializable); decode each (a value that
//	             does not decode is passed over); group by version, appending the nodes
package gomicro
