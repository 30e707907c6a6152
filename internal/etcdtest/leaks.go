package etcdtest

import "go.uber.org/goleak"

// IgnoreLeaks returns the goleak options needed for goroutines that outlive
// this package's members and clients. With etcd v3.7.3 there are none: a
// stopped member leaves no goroutine behind (see peerconns.go for the
// lingering peer connections this package closes itself), so the list is
// empty. Pass it anyway, so that a future etcd needing exceptions only
// changes this function:
//
//	goleak.VerifyTestMain(m, etcdtest.IgnoreLeaks()...)
func IgnoreLeaks() []goleak.Option {
	return []goleak.Option{}
}
