package main

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/mustersd/muster/internal/etcdtest"
)

// TestRegisterAlsoAndFormats: `register --also go-zero --also kitex:order`
// publishes the endpoint where go-zero and Kitex clients look, and `ls` and
// `watch` read those formats with --format.
func TestRegisterAlsoAndFormats(t *testing.T) {
	m := etcdtest.Single(t)
	eps := m.Endpoints()[0]
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	regCtx, stop := context.WithCancel(ctx)
	var out, errOut syncBuffer
	done := make(chan int, 1)
	go func() {
		done <- execute(regCtx, []string{"register", "order.rpc", "127.0.0.1:8080", "--weight", "3",
			"--also", "go-zero", "--also", "kitex:order", "--endpoints", eps, "--log-level", "warn"},
			&out, &errOut, func(string) string { return "" })
	}()
	waitFor(t, ctx, func() bool { return strings.Contains(out.String(), "registered ") }, func() string { return out.String() + errOut.String() })

	ls, lsErr, code := runInProcess(ctx, eps, "ls", "order.rpc", "--format", "go-zero")
	if rows := tableRows(t, ls); code != 0 || len(rows) != 1 || rows[0]["ADDR"] != "127.0.0.1:8080" {
		t.Fatalf("ls --format go-zero (code %d):\n%s%s", code, ls, lsErr)
	}
	ls, lsErr, code = runInProcess(ctx, eps, "ls", "order", "--format", "kitex")
	if rows := tableRows(t, ls); code != 0 || len(rows) != 1 || rows[0]["WEIGHT"] != "3" {
		t.Fatalf("ls --format kitex (code %d):\n%s%s", code, ls, lsErr)
	}
	if _, lsErr, code = runInProcess(ctx, eps, "ls", "--format", "go-zero"); code != 2 || !strings.Contains(lsErr, "name the SERVICE") {
		t.Fatalf("ls --format go-zero without a service: code %d, %q", code, lsErr)
	}
	if _, lsErr, code = runInProcess(ctx, eps, "ls", "x", "--format", "consul"); code != 2 || !strings.Contains(lsErr, "--format") {
		t.Fatalf("ls --format consul: code %d, %q", code, lsErr)
	}

	wctx, wstop := context.WithCancel(ctx)
	var wout, werr syncBuffer
	wdone := make(chan int, 1)
	go func() {
		wdone <- execute(wctx, []string{"watch", "order.rpc", "--format", "go-zero", "--endpoints", eps}, &wout, &werr, func(string) string { return "" })
	}()
	waitFor(t, ctx, func() bool { return strings.Contains(wout.String(), "127.0.0.1:8080") }, func() string { return wout.String() + werr.String() })
	wstop()
	<-wdone

	stop()
	if code := <-done; code != 0 {
		t.Fatalf("register exited %d: %s", code, errOut.String())
	}
	if ls, _, _ := runInProcess(ctx, eps, "ls", "order.rpc", "--format", "go-zero"); strings.Contains(ls, "127.0.0.1:8080") {
		t.Fatalf("the go-zero key outlived the deregistration:\n%s", ls)
	}

	_, regErr, code := runInProcess(ctx, eps, "register", "a.rpc", "127.0.0.1:1", "--also", "consul")
	if code != 2 || !strings.Contains(regErr, "--also") {
		t.Fatalf("register --also consul: code %d, %q", code, regErr)
	}
}
