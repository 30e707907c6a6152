package keyfmt

import (
	"fmt"
	"slices"
	"strings"
)

var formats = map[string]Format{"native": Native}

// Lookup returns the format called name ("native", and "etcd" as another
// name for it).
func Lookup(name string) (Format, error) {
	switch strings.ToLower(name) {
	case "", "etcd":
		return Native, nil
	}
	if f, ok := formats[strings.ToLower(name)]; ok {
		return f, nil
	}
	return nil, fmt.Errorf("unknown format %q (known: %s)", name, strings.Join(Names(), ", "))
}

// Names lists the known formats.
func Names() []string {
	names := make([]string, 0, len(formats))
	for n := range formats {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}
