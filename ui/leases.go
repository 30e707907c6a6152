package ui

import (
	"cmp"
	"context"
	"slices"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// leasesJSON is a "leases" event: leases found for instances, and TTLs
// read.
type leasesJSON struct {
	Seq       uint64               `json:"seq"`
	Instances []instanceLeaseJSON  `json:"instances,omitempty"`
	Leases    map[string]leaseJSON `json:"leases,omitempty"`
}

type instanceLeaseJSON struct {
	Service        string `json:"service"`
	ID             string `json:"id"`
	Lease          string `json:"lease"`
	CreateRevision int64  `json:"createRevision"`
}

// leaseLoop finds the leases of new instances and reads lease TTLs, every
// leaseInterval, while etcd answers.
func (s *Server) leaseLoop() {
	s.every(leaseInterval, false, func() {
		s.mu.Lock()
		healthy := s.health.statusErr == nil
		s.mu.Unlock()
		if healthy {
			s.refreshLeases()
		}
	})
}

// keyMeta is what a read tells of a key beside its value. (Values are read
// too: etcd 3.7 leaves the lease out of keys-only answers.)
type keyMeta struct {
	lease     clientv3.LeaseID
	createRev int64
}

// refreshLeases does one round: the leases of pending instances, then the
// TTLs of new leases and of up to LeaseReadsPerSecond known ones, oldest
// reading first.
func (s *Server) refreshLeases() {
	ctx, cancel := context.WithTimeout(s.ctx, 3*leaseInterval)
	defer cancel()

	s.mu.Lock()
	pending := make([]instKey, 0, len(s.pending))
	for k := range s.pending {
		pending = append(pending, k)
	}
	s.mu.Unlock()

	metas, err := s.readKeyMeta(ctx, pending)
	if err != nil {
		s.o.logger.Debug("ui: reading the leases of new instances", "error", err)
	}

	// Attach what was found; pick the leases to read.
	ev := leasesJSON{}
	s.mu.Lock()
	for k, m := range metas {
		in := s.instances[k]
		delete(s.pending, k)
		if in == nil {
			continue
		}
		if in.createRev != m.createRev {
			if in.createRev != 0 && !in.atStart {
				in.firstSeen = time.Now() // the key was created again
			}
			in.createRev = m.createRev
		}
		if in.lease != m.lease {
			s.dropLeaseLocked(in)
			in.lease = m.lease
			if m.lease != clientv3.NoLease {
				l := s.leases[m.lease]
				if l == nil {
					l = &leaseInfo{}
					s.leases[m.lease] = l
				}
				l.users++
			}
		}
		ev.Instances = append(ev.Instances, instanceLeaseJSON{Service: k.service, ID: k.id, Lease: leaseHex(in.lease), CreateRevision: in.createRev})
	}
	var fresh, known []clientv3.LeaseID
	for id, l := range s.leases {
		if l.readAt.IsZero() {
			fresh = append(fresh, id)
		} else {
			known = append(known, id)
		}
	}
	slices.SortFunc(known, func(a, b clientv3.LeaseID) int { return s.leases[a].readAt.Compare(s.leases[b].readAt) })
	s.mu.Unlock()
	budget := max(0, int(float64(LeaseReadsPerSecond)*leaseInterval.Seconds()))
	toRead := append(fresh, known[:min(len(known), budget)]...)

	ttls := s.readTTLs(ctx, toRead)

	s.mu.Lock()
	defer s.mu.Unlock()
	for id, r := range ttls {
		l := s.leases[id]
		if l == nil {
			continue // its instances left meanwhile
		}
		l.ttl, l.granted, l.readAt = r.ttl, r.granted, r.readAt
		if ev.Leases == nil {
			ev.Leases = map[string]leaseJSON{}
		}
		ev.Leases[leaseHex(id)] = l.json()
	}
	if len(ev.Instances) == 0 && len(ev.Leases) == 0 {
		return
	}
	slices.SortFunc(ev.Instances, func(a, b instanceLeaseJSON) int {
		return cmp.Or(cmp.Compare(a.Service, b.Service), cmp.Compare(a.ID, b.ID))
	})
	ev.Seq = s.seq + 1
	s.publishLocked("leases", ev)
}

// readKeyMeta reads the lease and create revision of the keys of the given
// instances: in transactions of txnGets Gets, or, for many, with one Get of
// the namespace. Keys that no longer exist are
// returned with a zero keyMeta.
func (s *Server) readKeyMeta(ctx context.Context, keys []instKey) (map[instKey]keyMeta, error) {
	out := make(map[instKey]keyMeta, len(keys))
	if len(keys) == 0 {
		return out, nil
	}
	s.metrics.keyReads.Inc()
	if len(keys) > prefixScanAbove {
		resp, err := s.cli.Get(ctx, s.prefix, clientv3.WithPrefix())
		if err != nil {
			return nil, err
		}
		want := make(map[string]instKey, len(keys))
		for _, k := range keys {
			want[s.keyOf(k)] = k
			out[k] = keyMeta{}
		}
		for _, kv := range resp.Kvs {
			if k, ok := want[string(kv.Key)]; ok {
				out[k] = keyMeta{lease: clientv3.LeaseID(kv.Lease), createRev: kv.CreateRevision}
			}
		}
		return out, nil
	}
	for chunk := range slices.Chunk(keys, txnGets) {
		ops := make([]clientv3.Op, len(chunk))
		for i, k := range chunk {
			ops[i] = clientv3.OpGet(s.keyOf(k))
		}
		resp, err := s.cli.Txn(ctx).Then(ops...).Commit()
		if err != nil {
			return out, err
		}
		for i, r := range resp.Responses {
			m := keyMeta{}
			if kvs := r.GetResponseRange().GetKvs(); len(kvs) > 0 {
				m = keyMeta{lease: clientv3.LeaseID(kvs[0].Lease), createRev: kvs[0].CreateRevision}
			}
			out[chunk[i]] = m
		}
	}
	return out, nil
}

// keyOf returns the etcd key of an instance: <namespace>/<service>/<id>
// (the native layout; for other formats the lookup finds nothing and the
// lease stays unknown).
func (s *Server) keyOf(k instKey) string { return s.prefix + k.service + "/" + k.id }

type ttlReading struct {
	ttl, granted int64
	readAt       time.Time
}

// readTTLs reads the TTLs of ids, ttlWorkers at a time. Leases it could
// not read are left out.
func (s *Server) readTTLs(ctx context.Context, ids []clientv3.LeaseID) map[clientv3.LeaseID]ttlReading {
	out := make(map[clientv3.LeaseID]ttlReading, len(ids))
	if len(ids) == 0 {
		return out
	}
	var (
		mu   sync.Mutex
		wg   sync.WaitGroup
		next = make(chan clientv3.LeaseID)
	)
	for range min(ttlWorkers, len(ids)) {
		wg.Go(func() {
			for id := range next {
				resp, err := s.cli.TimeToLive(ctx, id)
				s.metrics.leaseReads.Inc()
				if err != nil {
					continue
				}
				mu.Lock()
				out[id] = ttlReading{ttl: resp.TTL, granted: resp.GrantedTTL, readAt: time.Now()}
				mu.Unlock()
			}
		})
	}
feed:
	for _, id := range ids {
		select {
		case next <- id:
		case <-ctx.Done():
			break feed
		}
	}
	close(next)
	wg.Wait()
	return out
}
