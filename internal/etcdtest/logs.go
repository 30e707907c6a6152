package etcdtest

import (
	"strings"
	"sync"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// logKeep is how many log entries of each Member are kept for failure
// messages.
const logKeep = 50

// logRing keeps the last logKeep entries etcd logged at warn level or above.
// Nothing is printed: the entries only end up in t.Fatal messages when a
// start or restart fails.
type logRing struct {
	mu    sync.Mutex
	lines []string
	next  int
}

func (r *logRing) Write(p []byte) (int, error) {
	s := strings.TrimRight(string(p), "\n")
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.lines) < logKeep {
		r.lines = append(r.lines, s)
	} else {
		r.lines[r.next] = s
		r.next = (r.next + 1) % logKeep
	}
	return len(p), nil
}

func (r *logRing) Sync() error { return nil }

// String returns the kept entries, oldest first.
func (r *logRing) String() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var b strings.Builder
	for i := range r.lines {
		b.WriteString(r.lines[(r.next+i)%len(r.lines)])
		b.WriteByte('\n')
	}
	return b.String()
}

func (r *logRing) logger() *zap.Logger {
	enc := zap.NewDevelopmentEncoderConfig()
	enc.EncodeTime = zapcore.TimeEncoderOfLayout("15:04:05.000")
	core := zapcore.NewCore(zapcore.NewConsoleEncoder(enc), r, zap.WarnLevel)
	return zap.New(core)
}
