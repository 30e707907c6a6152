// Package endpoint defines the value every part of Muster passes around: one
// instance of one service, with its address and the metadata balancers read
// (weight, zone, version, tags).
//
// It knows nothing of etcd or gRPC. Validation errors name the field that is
// wrong:
//
//	e := endpoint.Endpoint{Service: "order.rpc", Addr: "10.0.0.7:8080", Zone: "eu-1a"}
//	if err := e.Validate(); err != nil {
//		return err // e.g. `endpoint "10.0.0.7:8080": weight 20000 out of range 0..10000`
//	}
//	e = e.Normalize() // ID defaults to Addr
package endpoint
