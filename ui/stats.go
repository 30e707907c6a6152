package ui

import (
	"time"
)

// statsLoop asks the StatsSource for a reading every statsInterval and
// publishes each new one, latest wins; the last statsSamples readings go into the state
// so that a page opened late has history for its charts.
func (s *Server) statsLoop() { s.every(statsInterval, false, s.takeStats) }

// takeStats takes one reading from the StatsSource and publishes it.
func (s *Server) takeStats() {
	rows := s.o.stats.BackendStats()
	if rows == nil {
		return
	}
	sample := statsSample{Time: time.Now().UnixMilli(), Backends: make([]backendStatsJSON, len(rows))}
	for i, r := range rows {
		sample.Backends[i] = backendStatsJSON{BackendStats: r, P50: ms(r.P50), P99: ms(r.P99)}
	}
	data, err := jsonMarshal(sample)
	if err != nil {
		return
	}
	s.mu.Lock()
	s.stats = append(s.stats, sample)
	if len(s.stats) > statsSamples {
		s.stats = s.stats[len(s.stats)-statsSamples:]
	}
	s.statsMsg = message{seq: s.statsMsg.seq + 1, event: "stats", data: data}
	s.wakeLocked()
	s.mu.Unlock()
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
