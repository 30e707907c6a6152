package ui

import (
	"bufio"
	"compress/gzip"
	"encoding/json"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"
)

func jsonMarshal(v any) ([]byte, error) { return json.Marshal(v) }

// serveEvents answers /api/events: a Server-Sent Events stream. It resumes
// after the event id of the Last-Event-ID header (sent by a browser that
// reconnects) or of the since parameter ("<epoch>.<seq>" of /api/state);
// a client without either, or too far behind, first gets the whole state as
// a "state" event. Then come "delta" and "leases" events (with ids), and the
// latest "health" and "stats" (without).
func (s *Server) serveEvents(w http.ResponseWriter, r *http.Request) {
	rc := http.NewResponseController(w)
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no")

	var last uint64
	resume := false
	for _, v := range []string{r.Header.Get("Last-Event-ID"), r.URL.Query().Get("since")} {
		if v == "" {
			continue
		}
		// "<epoch>.<seq>": a sequence number of another run of the server
		// (a restart) means nothing here.
		epoch, seq, _ := strings.Cut(strings.TrimSpace(v), ".")
		if n, err := strconv.ParseUint(seq, 10, 64); err == nil && epoch == s.epoch {
			last, resume = n, true
		}
		break
	}

	wake := make(chan struct{}, 1)
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		http.Error(w, "dashboard closed", http.StatusServiceUnavailable)
		return
	}
	s.clients[wake] = struct{}{}
	s.mu.Unlock()
	s.metrics.clients.Inc()
	defer func() {
		s.mu.Lock()
		delete(s.clients, wake)
		s.mu.Unlock()
		s.metrics.clients.Dec()
	}()

	w.WriteHeader(http.StatusOK)
	bw := bufio.NewWriterSize(w, 32<<10)
	// Tell the browser to reconnect quickly after a break.
	io.WriteString(bw, "retry: 1000\n\n")
	var healthSeen, statsSeen uint64
	keepAlive := time.NewTicker(keepAliveInterval)
	defer keepAlive.Stop()
	for {
		s.mu.Lock()
		var out []message
		var whole *stateJSON // encoded after the lock is released
		if !resume || last > s.seq || (len(s.log) > 0 && last+1 < s.log[0].seq) || (len(s.log) == 0 && last != s.seq) {
			st := s.stateLocked()
			whole = &st
			last, resume = s.seq, true
		} else {
			for _, m := range s.log {
				if m.seq > last {
					out = append(out, m)
				}
			}
			last = s.seq
		}
		if s.healthMsg.seq != healthSeen {
			healthSeen = s.healthMsg.seq
			out = append(out, message{event: s.healthMsg.event, data: s.healthMsg.data})
		}
		if s.o.stats != nil && s.statsMsg.seq != statsSeen {
			statsSeen = s.statsMsg.seq
			out = append(out, message{event: s.statsMsg.event, data: s.statsMsg.data})
		}
		s.mu.Unlock()
		if whole != nil {
			data, err := json.Marshal(whole)
			if err != nil {
				return
			}
			out = append([]message{{seq: whole.Seq, event: "state", data: data}}, out...)
		}

		for _, m := range out {
			writeEvent(bw, s.epoch, m)
			s.metrics.events.WithLabelValues(m.event).Inc()
		}
		if len(out) > 0 {
			if bw.Flush() != nil || rc.Flush() != nil {
				return
			}
		}
		select {
		case <-wake:
		case <-keepAlive.C:
			io.WriteString(bw, ": keep-alive\n\n")
			if bw.Flush() != nil || rc.Flush() != nil {
				return
			}
		case <-r.Context().Done():
			return
		case <-s.ctx.Done():
			return
		}
	}
}

// writeEvent writes m in the event stream format, its id (if it has a
// sequence number) "<epoch>.<seq>". JSON has no newlines, so data is one
// line.
func writeEvent(w io.Writer, epoch string, m message) {
	if m.seq != 0 {
		io.WriteString(w, "id: "+epoch+"."+strconv.FormatUint(m.seq, 10)+"\n")
	}
	io.WriteString(w, "event: "+m.event+"\ndata: ")
	w.Write(m.data)
	io.WriteString(w, "\n\n")
}

// maybeGzip returns the writer to write a response to: w, or a gzip writer
// on it when the client accepts gzip. done finishes the response.
func maybeGzip(w http.ResponseWriter, r *http.Request) (io.Writer, func()) {
	w.Header().Add("Vary", "Accept-Encoding")
	if !acceptsGzip(r.Header.Get("Accept-Encoding")) {
		return w, func() {}
	}
	w.Header().Set("Content-Encoding", "gzip")
	gz, _ := gzip.NewWriterLevel(w, gzip.BestSpeed)
	return gz, func() { _ = gz.Close() }
}

func acceptsGzip(header string) bool {
	for part := range strings.SplitSeq(header, ",") {
		name, params, _ := strings.Cut(strings.TrimSpace(part), ";")
		if !strings.EqualFold(strings.TrimSpace(name), "gzip") {
			continue
		}
		if q, ok := strings.CutPrefix(strings.TrimSpace(params), "q="); ok {
			f, err := strconv.ParseFloat(q, 64)
			return err == nil && f > 0
		}
		return true
	}
	return false
}
