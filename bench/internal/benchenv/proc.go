package benchenv

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// RSSBytes returns the resident set size of this process (VmRSS).
func RSSBytes() (int64, error) {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0, fmt.Errorf("read RSS: %w (the benchmark needs Linux /proc)", err)
	}
	for line := range bytes.Lines(b) {
		rest, ok := bytes.CutPrefix(line, []byte("VmRSS:"))
		if !ok {
			continue
		}
		f := strings.Fields(string(rest))
		if len(f) != 2 || f[1] != "kB" {
			return 0, fmt.Errorf("read RSS: unexpected line %q", line)
		}
		kb, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("read RSS: %w", err)
		}
		return kb << 10, nil
	}
	return 0, fmt.Errorf("read RSS: no VmRSS in /proc/self/status")
}

// CPUTime returns the user+system CPU time this process has used so far.
func CPUTime() (time.Duration, error) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0, fmt.Errorf("getrusage: %w", err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), nil
}

// DiskInfo names the file system dir is on.
func DiskInfo(dir string) string {
	if dev, mnt, typ, ok := mountOf(dir); ok {
		return fmt.Sprintf("%s on %s (%s)", typ, dev, mnt)
	}
	return "unknown file system"
}

// FsyncProbe reports how long an fdatasync of a 4 KiB write takes in dir
// (median and 99th percentile of 200), which bounds how fast etcd commits
// with fsync on.
func FsyncProbe(dir string) string {
	f, err := os.CreateTemp(dir, "fsync-probe-*")
	if err != nil {
		return "fdatasync probe failed: " + err.Error()
	}
	defer os.Remove(f.Name())
	defer f.Close()
	buf := make([]byte, 4096)
	var d []time.Duration
	for i := range 200 {
		if _, err := f.WriteAt(buf, int64(i)*4096); err != nil {
			return "fdatasync probe failed: " + err.Error()
		}
		t := time.Now()
		if err := unix.Fdatasync(int(f.Fd())); err != nil {
			return "fdatasync probe failed: " + err.Error()
		}
		d = append(d, time.Since(t))
	}
	slices.Sort(d)
	return fmt.Sprintf("fdatasync of 4 KiB: p50 %v, p99 %v",
		d[len(d)/2].Round(time.Microsecond), d[len(d)*99/100].Round(time.Microsecond))
}

// mountOf finds the mount that holds dir in /proc/self/mounts.
func mountOf(dir string) (dev, mnt, typ string, ok bool) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "", "", "", false
	}
	if p, err := filepath.EvalSymlinks(abs); err == nil {
		abs = p
	}
	f, err := os.Open("/proc/self/mounts")
	if err != nil {
		return "", "", "", false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fl := strings.Fields(sc.Text())
		if len(fl) < 3 {
			continue
		}
		m := fl[1]
		if (abs == m || strings.HasPrefix(abs, strings.TrimSuffix(m, "/")+"/")) && len(m) >= len(mnt) {
			dev, mnt, typ, ok = fl[0], m, fl[2], true
		}
	}
	return dev, mnt, typ, ok
}
