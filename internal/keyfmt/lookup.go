package keyfmt

import (
	"fmt"
	"slices"
	"strings"
)

var formats = map[string]Format{
	"native":   Native,
	"go-zero":  GoZero,
	"kitex":    Kitex,
	"go-kit":   GoKit,
	"kratos":   Kratos,
	"go-micro": GoMicro,
}

// DefaultNamespaceOf returns the namespace a format's keys live under when
// none is configured: "services" for native, "" for go-zero and go-kit
// (whose keys begin with the service or the user's prefix),
// "kitex/registry-etcd" for Kitex, "/microservices" for Kratos and
// "/micro/registry" for go-micro.
func DefaultNamespaceOf(f Format) string {
	switch f.Name() {
	case "go-zero", "go-kit":
		return ""
	case "kitex":
		return "kitex/registry-etcd"
	case "kratos":
		return DefaultKratosNamespace
	case "go-micro":
		return DefaultGoMicroNamespace
	}
	return DefaultNamespace
}

// Lookup returns the format called name: "native" ("etcd" is another name
// for it), "go-zero" ("gozero"), "kitex", "go-kit" ("gokit"), "kratos" or
// "go-micro" ("gomicro").
func Lookup(name string) (Format, error) {
	switch strings.ToLower(name) {
	case "", "etcd":
		return Native, nil
	case "gozero":
		return GoZero, nil
	case "gokit":
		return GoKit, nil
	case "gomicro":
		return GoMicro, nil
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
