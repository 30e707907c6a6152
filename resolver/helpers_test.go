package resolver

import (
	"github.com/mustersd/muster/discovery"
	"github.com/mustersd/muster/endpoint"
)

func discoverySnapshot(eps ...endpoint.Endpoint) discovery.Snapshot {
	return discovery.Snapshot{Revision: 1, Endpoints: eps}
}
