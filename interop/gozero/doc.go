// Package gozero tests Muster against go-zero (github.com/zeromicro/go-zero)
// with go-zero's own code: discov.Publisher (what a zrpc server registers
// with), discov.Subscriber and the zrpc client, both ways, and a fleet
// whose instances are registered by go-zero, etcd naming and Muster at
// once.
//
// go-zero's key is <Etcd.Key>/<lease id> and its value the bare
// "host:port". Muster reads it with the go-zero format: Etcd.Key
// "order.rpc" is service order.rpc in no namespace, "dev/order.rpc" is
// service order.rpc in namespace dev, and "prod.order.rpc" is the service
// prod.order.rpc.
package gozero
