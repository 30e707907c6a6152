package xds

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	_ "github.com/mustersd/muster/balancer/p2c" // Go clients that know muster_p2c
	"github.com/mustersd/muster/internal/etcdtest"
)

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) != "" {
		os.Exit(childMain())
	}
	goleak.VerifyTestMain(m, etcdtest.IgnoreLeaks()...)
}

// childMain is a client process of TestFleetOfProcesses. Like any gRPC
// program pointed at Muster, it finds the xDS server through the bootstrap
// in $GRPC_XDS_BOOTSTRAP_CONFIG and grpc-go's own xds:/// resolver, resolves
// xds:///$MUSTER_XDS_SERVICE, and sends RPCs until its stdin closes,
// printing "hit NAME" when a backend starts answering, "gone NAME" when it
// has not answered for streak RPCs in a row, and "error ..." for a failed
// RPC.
func childMain() int {
	cc, err := grpc.NewClient("xds:///"+os.Getenv("MUSTER_XDS_SERVICE"), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 3
	}
	defer cc.Close()
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		_, _ = bufio.NewReader(os.Stdin).ReadString('\n') // EOF when the parent is done
		cancel()
	}()
	out := bufio.NewWriter(os.Stdout)
	misses := map[string]int{} // of backends seen and not gone: RPCs since their last answer
	for ctx.Err() == nil {
		name, err := call(ctx, cc)
		if err != nil {
			if ctx.Err() == nil {
				fmt.Fprintf(out, "error %v\n", err)
				out.Flush()
			}
			continue
		}
		changed := false
		if _, ok := misses[name]; !ok {
			fmt.Fprintf(out, "hit %s\n", name)
			changed = true
		}
		misses[name] = 0
		for n := range misses {
			if n == name {
				continue
			}
			if misses[n]++; misses[n] >= streak {
				fmt.Fprintf(out, "gone %s\n", n)
				delete(misses, n)
				changed = true
			}
		}
		if changed {
			out.Flush()
		}
		time.Sleep(5 * time.Millisecond)
	}
	return 0
}
