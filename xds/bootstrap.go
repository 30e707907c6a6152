package xds

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
)

// DefaultNodeID is the node id of a bootstrap whose NodeID is empty. The
// server does not tell clients apart by node: every client sees the same
// resources.
const DefaultNodeID = "muster-xds-client"

// Bootstrap is what a gRPC client needs to find the xDS server: the
// contents of the file GRPC_XDS_BOOTSTRAP points to (or of
// GRPC_XDS_BOOTSTRAP_CONFIG).
type Bootstrap struct {
	// Server is the xDS server's host:port. Required.
	Server string
	// NodeID identifies the client to the server (in its logs). Default
	// DefaultNodeID.
	NodeID string
	// Zone is the client's zone, sent as its node's locality. Optional.
	Zone string
}

type bootstrapJSON struct {
	XDSServers []bootstrapServer `json:"xds_servers"`
	Node       bootstrapNode     `json:"node"`
}

type bootstrapServer struct {
	ServerURI      string              `json:"server_uri"`
	ChannelCreds   []map[string]string `json:"channel_creds"`
	ServerFeatures []string            `json:"server_features"`
}

type bootstrapNode struct {
	ID string `json:"id"`
	// Locality is always present, empty when there is no zone: grpc-js-xds
	// (Node.js) refuses a bootstrap whose node has no locality.
	Locality map[string]string `json:"locality"`
}

// JSON returns the bootstrap configuration: one xDS server reached without
// TLS (channel_creds insecure), speaking xDS v3, whose clients keep a
// Listener or Cluster the server stops sending (ignore_resource_deletion)
// instead of failing their RPCs.
func (b Bootstrap) JSON() ([]byte, error) {
	if b.Server == "" {
		return nil, errors.New("xds: bootstrap: no server address")
	}
	if _, _, err := net.SplitHostPort(b.Server); err != nil {
		return nil, fmt.Errorf("xds: bootstrap: server %q: want host:port", b.Server)
	}
	id := b.NodeID
	if id == "" {
		id = DefaultNodeID
	}
	j := bootstrapJSON{
		XDSServers: []bootstrapServer{{
			ServerURI:      b.Server,
			ChannelCreds:   []map[string]string{{"type": "insecure"}},
			ServerFeatures: []string{"xds_v3", "ignore_resource_deletion"},
		}},
		Node: bootstrapNode{ID: id, Locality: map[string]string{}},
	}
	if b.Zone != "" {
		j.Node.Locality = map[string]string{"zone": b.Zone}
	}
	out, err := json.MarshalIndent(j, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("xds: bootstrap: %w", err)
	}
	return out, nil
}
