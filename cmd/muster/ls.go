package main

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"sync"
	"text/tabwriter"

	"github.com/spf13/cobra"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/mustersd/muster/endpoint"
	"github.com/mustersd/muster/internal/keyfmt"
)

// maxMalformedShown bounds how many malformed values ls lists on stderr.
const maxMalformedShown = 10

// ttlWorkers bounds the concurrent TimeToLive requests of ls.
const ttlWorkers = 8

func newLsCmd(a *app) *cobra.Command {
	var asJSON bool
	var format string
	cmd := &cobra.Command{
		Use:   "ls [SERVICE]",
		Short: "List the registered endpoints",
		Long: `List the endpoints registered under the namespace, or those of SERVICE,
sorted by service and instance id. TTL is what is left of the lease the key
is attached to ("-" for a key without a lease).

Values that cannot be decoded are skipped and reported on stderr.

With --format, ls reads what another system registered (go-zero, kitex,
go-kit, kratos, go-micro) for one SERVICE; --namespace then defaults to that
format's own (none for go-zero and go-kit, kitex/registry-etcd for Kitex,
/microservices for Kratos, /micro/registry for go-micro).`,
		Example: `  muster ls
  muster ls order.rpc
  muster ls --json | jq -r '.[].addr'
  muster ls order.rpc --format go-zero`,
		Args: cobra.MaximumNArgs(1),
		RunE: runE(func(cmd *cobra.Command, args []string) error {
			service := ""
			if len(args) == 1 {
				service = args[0]
				if err := endpoint.ValidateService(service); err != nil {
					return usageErrorf("%v", err)
				}
			}
			f, ns, err := a.formatAndNamespace(format)
			if err != nil {
				return err
			}
			if f != keyfmt.Native && service == "" {
				return usageErrorf("--format %s: name the SERVICE to list", f.Name())
			}
			return a.ls(cmd.Context(), service, f, ns, asJSON)
		}),
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print a JSON array, one object per endpoint")
	cmd.Flags().StringVar(&format, "format", "native", "key format to read: "+strings.Join(keyfmt.Names(), ", "))
	return cmd
}

// lsRow is one endpoint as ls prints it. The JSON form is for scripts.
type lsRow struct {
	Service string            `json:"service"`
	ID      string            `json:"id"`
	Addr    string            `json:"addr"`
	Zone    string            `json:"zone"`
	Weight  int               `json:"weight"`
	Version string            `json:"version"`
	Tags    map[string]string `json:"tags"`
	// TTLSeconds is what is left of the lease, or null for a key without a
	// lease (or whose lease could not be read).
	TTLSeconds *int64 `json:"ttl_seconds"`
	// Lease is the lease ID in hex, as etcdctl prints and reads it, or null.
	Lease *string `json:"lease"`

	lease clientv3.LeaseID
}

// lsResult is what ls read from etcd.
type lsResult struct {
	prefix    string
	rows      []lsRow
	malformed []string // "key: error"
	ttlErr    error    // the first error reading a lease's TTL
}

// ls lists the endpoints of service, or of every service when it is "".
func (a *app) ls(ctx context.Context, service string, f keyfmt.Format, ns string, asJSON bool) error {
	cli, err := a.connect()
	if err != nil {
		return err
	}
	defer cli.Close()
	res, err := a.list(ctx, cli, service, f, ns)
	if err != nil {
		return err
	}
	if asJSON {
		err = printJSON(a.stdout, res.rows)
	} else {
		err = printTable(a.stdout, res, service)
	}
	if err != nil {
		return err
	}
	printWarnings(a.stderr, res)
	return nil
}

// list reads the keys under the prefix of service (or of the namespace) in
// one Get and the TTLs of their leases.
func (a *app) list(ctx context.Context, cli *clientv3.Client, service string, f keyfmt.Format, ns string) (*lsResult, error) {
	res := &lsResult{prefix: keyfmt.NamespacePrefix(ns)}
	if service != "" {
		res.prefix = f.Prefix(ns, service)
	}
	gctx, cancel := context.WithTimeout(ctx, a.global.dialTimeout)
	resp, err := cli.Get(gctx, res.prefix, clientv3.WithPrefix())
	cancel()
	if err != nil {
		return nil, a.etcdError(err)
	}
	res.rows = make([]lsRow, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		key := string(kv.Key)
		svc, id := service, strings.TrimPrefix(key, res.prefix)
		if service == "" {
			var ok bool
			if svc, id, ok = keyfmt.SplitKey(ns, key); !ok {
				res.malformed = append(res.malformed, fmt.Sprintf("%q: key is not %s<service>/<id>", key, keyfmt.NamespacePrefix(ns)))
				continue
			}
		}
		e, err := f.Decode(svc, id, kv.Value)
		if err != nil {
			res.malformed = append(res.malformed, fmt.Sprintf("%s: %v", key, err))
			continue
		}
		if e.Tags == nil {
			e.Tags = map[string]string{}
		}
		res.rows = append(res.rows, lsRow{
			Service: e.Service,
			ID:      e.ID,
			Addr:    e.Addr,
			Zone:    e.Zone,
			Weight:  e.EffectiveWeight(),
			Version: e.Version,
			Tags:    e.Tags,
			lease:   clientv3.LeaseID(kv.Lease),
		})
	}
	slices.SortFunc(res.rows, func(x, y lsRow) int {
		return cmp.Or(strings.Compare(x.Service, y.Service), strings.Compare(x.ID, y.ID))
	})

	tctx, cancel := context.WithTimeout(ctx, a.global.dialTimeout)
	defer cancel()
	ttls, err := leaseTTLs(tctx, cli, res.rows)
	res.ttlErr = err
	for i := range res.rows {
		r := &res.rows[i]
		if r.lease == clientv3.NoLease {
			continue
		}
		id := fmt.Sprintf("%x", int64(r.lease))
		r.Lease = &id
		if ttl, ok := ttls[r.lease]; ok {
			r.TTLSeconds = &ttl
		}
	}
	return res, nil
}

// leaseTTLs asks etcd for the TTL left of each distinct lease of rows, a few
// at a time. A lease that expired meanwhile has TTL 0. It returns the TTLs it
// could read and the first error.
func leaseTTLs(ctx context.Context, cli *clientv3.Client, rows []lsRow) (map[clientv3.LeaseID]int64, error) {
	seen := map[clientv3.LeaseID]bool{}
	var leases []clientv3.LeaseID
	for _, r := range rows {
		if r.lease != clientv3.NoLease && !seen[r.lease] {
			seen[r.lease] = true
			leases = append(leases, r.lease)
		}
	}
	var (
		mu       sync.Mutex
		ttls     = make(map[clientv3.LeaseID]int64, len(leases))
		firstErr error
		wg       sync.WaitGroup
		next     = make(chan clientv3.LeaseID)
	)
	for range min(ttlWorkers, len(leases)) {
		wg.Go(func() {
			for id := range next {
				resp, err := cli.TimeToLive(ctx, id)
				mu.Lock()
				switch {
				case err != nil:
					if firstErr == nil {
						firstErr = fmt.Errorf("lease %x: %w", int64(id), err)
					}
				default:
					ttls[id] = max(resp.TTL, 0) // -1: expired or not found
				}
				mu.Unlock()
			}
		})
	}
	for _, id := range leases {
		next <- id
	}
	close(next)
	wg.Wait()
	return ttls, firstErr
}

func printJSON(w io.Writer, rows []lsRow) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(rows)
}

func printTable(w io.Writer, res *lsResult, service string) error {
	if len(res.rows) == 0 {
		where := res.prefix
		if where == "" {
			where = "the root of the keyspace"
		}
		if service != "" {
			_, err := fmt.Fprintf(w, "no instances of %s registered under %s\n", service, where)
			return err
		}
		_, err := fmt.Fprintf(w, "no services registered under %s\n", where)
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "SERVICE\tID\tADDR\tZONE\tWEIGHT\tVERSION\tTAGS\tTTL")
	for _, r := range res.rows {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\t%s\t%s\n",
			r.Service, r.ID, r.Addr, orDash(r.Zone), r.Weight, orDash(r.Version), orDash(formatTags(r.Tags)), formatTTL(r))
	}
	return tw.Flush()
}

// formatTags returns the tags as "k=v" pairs sorted by key, comma-joined.
func formatTags(tags map[string]string) string {
	var b strings.Builder
	for i, k := range slices.Sorted(maps.Keys(tags)) {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(k)
		b.WriteByte('=')
		b.WriteString(tags[k])
	}
	return b.String()
}

func formatTTL(r lsRow) string {
	switch {
	case r.lease == clientv3.NoLease:
		return "-"
	case r.TTLSeconds == nil:
		return "?"
	default:
		return fmt.Sprintf("%ds", *r.TTLSeconds)
	}
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// printWarnings reports on w the values ls skipped and the lease TTLs it
// could not read.
func printWarnings(w io.Writer, res *lsResult) {
	switch n := len(res.malformed); {
	case n == 1:
		fmt.Fprintf(w, "muster ls: skipped 1 malformed value: %s\n", res.malformed[0])
	case n > 1:
		fmt.Fprintf(w, "muster ls: skipped %d malformed values:\n", n)
		for _, m := range res.malformed[:min(n, maxMalformedShown)] {
			fmt.Fprintf(w, "  %s\n", m)
		}
		if n > maxMalformedShown {
			fmt.Fprintf(w, "  ... and %d more\n", n-maxMalformedShown)
		}
	}
	if res.ttlErr != nil {
		fmt.Fprintf(w, "muster ls: could not read every lease TTL (shown as ?): %v\n", res.ttlErr)
	}
}
