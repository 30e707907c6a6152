package etcdtest

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
)

// Candidate ports are drawn at random from [portLow, portHigh], excluding the
// kernel's ephemeral range (net.ipv4.ip_local_port_range). Ports handed out to
// outgoing connections come from the ephemeral range, so staying outside of
// it avoids the classic race where a probed-free port is taken by an
// unrelated outgoing connection before etcd binds it.
const (
	portLow      = 10000
	portHigh     = 32767
	minPortSpan  = 1000 // smallest usable candidate span before widening the search
	maxPortProbe = 1000 // candidates tried per requested port
)

var (
	// reserved holds ports owned by Members of this process, including
	// stopped ones (a stopped Member must be able to Restart on its ports).
	reservedMu sync.Mutex
	reserved   = map[int]bool{}

	candidateOnce sync.Once
	candLo        int
	candHi        int
)

// ephemeralRange returns the kernel's ephemeral port range, or Linux's
// default when it cannot be read.
func ephemeralRange() (lo, hi int) {
	lo, hi = 32768, 60999
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return lo, hi
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return lo, hi
	}
	l, err1 := strconv.Atoi(f[0])
	h, err2 := strconv.Atoi(f[1])
	if err1 != nil || err2 != nil || l <= 0 || h < l {
		return lo, hi
	}
	return l, h
}

// candidateRange picks the span random ports are drawn from: the largest of
// [portLow, min(portHigh, ephemeralLo-1)] and [ephemeralHi+1, 65535], falling
// back to the whole non-privileged range (relying on probing and bind
// retries) when the ephemeral range leaves no room.
func candidateRange() (lo, hi int) {
	candidateOnce.Do(func() {
		eLo, eHi := ephemeralRange()
		below := [2]int{portLow, min(portHigh, eLo-1)}
		above := [2]int{max(portLow, eHi+1), 65535}
		switch {
		case below[1]-below[0] >= minPortSpan && below[1]-below[0] >= above[1]-above[0]:
			candLo, candHi = below[0], below[1]
		case above[1]-above[0] >= minPortSpan:
			candLo, candHi = above[0], above[1]
		default:
			candLo, candHi = 1024, 65535
		}
	})
	return candLo, candHi
}

// allocPortsFunc is allocPorts; tests replace it to simulate races.
var allocPortsFunc = allocPorts

// allocPorts reserves n distinct loopback ports that were free when probed.
// The caller must releasePorts them when done.
func allocPorts(n int) ([]int, error) {
	lo, hi := candidateRange()
	reservedMu.Lock()
	defer reservedMu.Unlock()
	ports := make([]int, 0, n)
	for len(ports) < n {
		p, err := probeOne(lo, hi)
		if err != nil {
			for _, q := range ports {
				delete(reserved, q)
			}
			return nil, err
		}
		reserved[p] = true
		ports = append(ports, p)
	}
	return ports, nil
}

// probeOne must be called with reservedMu held.
func probeOne(lo, hi int) (int, error) {
	for range maxPortProbe {
		p := lo + rand.IntN(hi-lo+1)
		if reserved[p] {
			continue
		}
		l, err := net.Listen("tcp", net.JoinHostPort(host, strconv.Itoa(p)))
		if err != nil {
			continue
		}
		// Go sets SO_REUSEADDR on listeners, so the port can be bound
		// again right away despite this close.
		l.Close()
		return p, nil
	}
	return 0, fmt.Errorf("etcdtest: no free port found in %d..%d after %d probes", lo, hi, maxPortProbe)
}

func releasePorts(ports []int) {
	reservedMu.Lock()
	defer reservedMu.Unlock()
	for _, p := range ports {
		delete(reserved, p)
	}
}

// isAddrInUse reports whether err is a failure to bind an address.
func isAddrInUse(err error) bool {
	return err != nil && (errors.Is(err, syscall.EADDRINUSE) || strings.Contains(err.Error(), "address already in use"))
}
