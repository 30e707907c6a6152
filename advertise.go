package muster

import (
	"errors"
	"fmt"
	"net"
	"strconv"
)

// advertiseAddr works out the address to register for a server listening on
// listenHost and port: the explicit advertise address (with the listen port
// when it has none), else listenHost when it is a specific address, else
// $POD_IP, else the first non-loopback unicast address of the machine.
func advertiseAddr(advertise, listenHost string, port int, getenv func(string) string, addrs func() ([]net.Addr, error)) (string, error) {
	p := strconv.Itoa(port)
	if advertise != "" {
		if _, _, err := net.SplitHostPort(advertise); err == nil {
			return advertise, nil
		}
		return net.JoinHostPort(advertise, p), nil
	}
	if listenHost != "" {
		ip := net.ParseIP(listenHost)
		if ip == nil || !ip.IsUnspecified() {
			return net.JoinHostPort(listenHost, p), nil
		}
	}
	if pod := getenv("POD_IP"); pod != "" {
		if net.ParseIP(pod) == nil {
			return "", fmt.Errorf("POD_IP %q is not an IP address", pod)
		}
		return net.JoinHostPort(pod, p), nil
	}
	host, err := firstNonLoopback(addrs)
	if err != nil {
		return "", err
	}
	return net.JoinHostPort(host, p), nil
}

// firstNonLoopback returns the machine's first global unicast address,
// preferring IPv4.
func firstNonLoopback(addrs func() ([]net.Addr, error)) (string, error) {
	as, err := addrs()
	if err != nil {
		return "", fmt.Errorf("list interface addresses: %w", err)
	}
	var v6 string
	for _, a := range as {
		var ip net.IP
		switch a := a.(type) {
		case *net.IPNet:
			ip = a.IP
		case *net.IPAddr:
			ip = a.IP
		default:
			continue
		}
		if !ip.IsGlobalUnicast() {
			continue // loopback, link-local, multicast, unspecified
		}
		if ip.To4() != nil {
			return ip.String(), nil
		}
		if v6 == "" {
			v6 = ip.String()
		}
	}
	if v6 != "" {
		return v6, nil
	}
	return "", errors.New("no non-loopback address to advertise; set Advertise (or POD_IP)")
}
