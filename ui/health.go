package ui

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// errText is err's message, "" for nil.
func errText(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// healthLoop reads the store's health at once, then every healthInterval.
func (s *Server) healthLoop() { s.every(healthInterval, true, s.checkHealth) }

// every calls f every d until the server closes; first at once if now is
// set.
func (s *Server) every(d time.Duration, now bool, f func()) {
	t := time.NewTicker(d)
	defer t.Stop()
	if now {
		f()
	}
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-t.C:
		}
		f()
	}
}

// checkHealth reads the members and the status of every endpoint.
func (s *Server) checkHealth() {
	ctx, cancel := context.WithTimeout(s.ctx, healthTimeout)
	defer cancel()
	eps := s.cli.Endpoints()
	type reading struct {
		ep   string
		resp *clientv3.StatusResponse
		err  error
	}
	readings := make([]reading, len(eps))
	var wg sync.WaitGroup
	for i, ep := range eps {
		wg.Go(func() {
			resp, err := s.cli.Status(ctx, ep)
			readings[i] = reading{ep, resp, err}
		})
	}
	var members *clientv3.MemberListResponse
	var membersErr error
	wg.Go(func() {
		members, membersErr = s.cli.MemberList(ctx, clientv3.WithSerializable())
	})
	wg.Wait()
	if s.ctx.Err() != nil {
		return
	}

	var best *clientv3.StatusResponse
	var errs []error
	byID := map[uint64]*clientv3.StatusResponse{}
	for _, r := range readings {
		if r.err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", r.ep, r.err))
			continue
		}
		byID[r.resp.Header.GetMemberId()] = r.resp
		if best == nil || r.resp.Header.GetRevision() > best.Header.GetRevision() {
			best = r.resp
		}
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	h := &s.health
	h.Endpoints = eps
	if best == nil {
		err := errors.Join(errs...)
		if err == nil {
			err = errors.New("no endpoint")
		}
		if h.statusErr == nil {
			s.o.logger.Warn("ui: etcd unreachable; showing the last known state", "error", err)
		}
		h.statusErr = err
		for i := range h.Members {
			h.Members[i].Reachable = false
		}
		s.setHealthLocked()
		return
	}
	if h.statusErr != nil {
		s.o.logger.Info("ui: etcd reachable again")
	}
	h.statusErr = nil
	h.CheckedAt = time.Now().UnixMilli()
	h.Revision = best.Header.GetRevision()
	h.DBSize, h.DBSizeUsed = best.DbSize, best.DbSizeInUse
	h.Leader = ""
	if best.Leader != 0 {
		h.Leader = fmt.Sprintf("%x", best.Leader)
	}
	if membersErr == nil {
		h.Members = h.Members[:0]
		for _, m := range members.Members {
			h.Members = append(h.Members, memberJSON{
				ID: fmt.Sprintf("%x", m.ID), Name: m.Name, ClientURLs: m.ClientURLs,
				Leader: m.ID == best.Leader, Learner: m.IsLearner,
			})
		}
	}
	for i := range h.Members {
		m := &h.Members[i]
		m.Reachable, m.Version, m.DBSize, m.RaftIndex = false, "", 0, 0
		for id, st := range byID {
			if fmt.Sprintf("%x", id) == m.ID {
				m.Reachable, m.Version, m.DBSize, m.RaftIndex = true, st.Version, st.DbSize, st.RaftIndex
			}
		}
		m.Leader = m.ID == h.Leader
	}
	s.setHealthLocked()
}

// setHealthLocked derives the stale flag and publishes the health, latest
// wins. s.mu is held.
func (s *Server) setHealthLocked() {
	h := &s.health
	err := h.statusErr
	if err == nil {
		err = s.watchErr
	}
	stale := err != nil
	switch {
	case stale && !h.Stale:
		h.StaleSince = time.Now().UnixMilli()
	case !stale:
		h.StaleSince = 0
	}
	h.Stale, h.Error = stale, errText(err)
	s.metrics.stale.Set(b2f(stale))
	data, _ := jsonMarshal(h)
	s.healthMsg = message{seq: s.healthMsg.seq + 1, event: "health", data: data}
	s.wakeLocked()
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
