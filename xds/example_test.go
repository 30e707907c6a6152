package xds_test

import (
	"fmt"

	"github.com/mustersd/muster/xds"
)

// A client's bootstrap, as `muster xds bootstrap` prints it.
func ExampleBootstrap() {
	js, err := xds.Bootstrap{Server: "127.0.0.1:18000", NodeID: "order-client", Zone: "eu-1a"}.JSON()
	if err != nil {
		panic(err)
	}
	fmt.Println(string(js))
	// Output:
	// {
	//   "xds_servers": [
	//     {
	//       "server_uri": "127.0.0.1:18000",
	//       "channel_creds": [
	//         {
	//           "type": "insecure"
	//         }
	//       ],
	//       "server_features": [
	//         "xds_v3",
	//         "ignore_resource_deletion"
	//       ]
	//     }
	//   ],
	//   "node": {
	//     "id": "order-client",
	//     "locality": {
	//       "zone": "eu-1a"
	//     }
	//   }
	// }
}
