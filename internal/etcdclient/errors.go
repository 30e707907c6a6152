package etcdclient

import (
	"errors"
	"fmt"
	"strings"
)

// Kinds of failure New and Ping report. Test with errors.Is; the error is
// then an *Error whose message names the endpoints, the cause and the
// setting to check, in the terms of Muster's YAML configuration:
// Etcd.Hosts (Config.Endpoints), Etcd.User and Etcd.Pass (Username,
// Password), Etcd.CACertFile (CACert), Etcd.CertFile and Etcd.CertKeyFile
// (Cert, Key).
var (
	// ErrAuth: etcd answered but refused the credentials: wrong user or
	// password, or authentication is required and none was configured.
	ErrAuth = errors.New("etcd authentication failed")
	// ErrTLS: the connection to etcd failed at the TLS level: etcd's
	// certificate does not verify against the configured CA, etcd wants a
	// client certificate or rejected it, or one side speaks TLS and the
	// other does not.
	ErrTLS = errors.New("etcd TLS failed")
	// ErrUnreachable: no etcd answered: nothing listens at the endpoints,
	// the network drops the connection or times out, or the members
	// accept connections but do not serve requests in time.
	ErrUnreachable = errors.New("etcd unreachable")
)

// Error is the error of New and Ping when etcd cannot be used. Its message
// is one line: which endpoints, what went wrong, and, in parentheses, what
// to check. errors.Is(err, Kind) holds, and errors.Is/As reach the
// underlying cause (for example rpctypes.ErrAuthFailed, syscall.ECONNREFUSED
// or x509.UnknownAuthorityError, when the cause was observed directly and
// not only as a gRPC status message).
type Error struct {
	// Kind is ErrAuth, ErrTLS, ErrUnreachable, or nil for other failures.
	Kind error
	// Endpoints are the endpoints the message is about.
	Endpoints []string
	// Err is the underlying cause.
	Err error

	msg  string
	more []*Error // further findings about other endpoints
}

// Error returns the message: one line, with the findings about endpoints
// that failed differently separated by "; ".
func (e *Error) Error() string {
	if len(e.more) == 0 {
		return e.msg
	}
	parts := []string{e.msg}
	for _, m := range e.more {
		parts = append(parts, m.msg)
	}
	return strings.Join(parts, "; ")
}

// Unwrap returns the kind and the cause (and those of findings about
// other endpoints, when endpoints failed in different ways).
func (e *Error) Unwrap() []error {
	var errs []error
	for _, x := range append([]*Error{e}, e.more...) {
		if x.Kind != nil {
			errs = append(errs, x.Kind)
		}
		if x.Err != nil {
			errs = append(errs, x.Err)
		}
	}
	return errs
}

// epsMark stands for the endpoints in a finding's message template.
const epsMark = "\x00"

// finding is what was found out about one endpoint.
type finding struct {
	endpoint string
	kind     error
	cause    error
	// msg is the message, with epsMark where the endpoints go.
	msg string
}

// newError turns findings into one error; findings with the same kind and
// message are merged by listing their endpoints together. It returns nil
// without findings.
func newError(fs []finding) *Error {
	var out []*Error
	var tmpl []string
	index := map[string]int{}
	for _, f := range fs {
		key := fmt.Sprint(f.kind) + "\x01" + f.msg
		i, ok := index[key]
		if !ok {
			i = len(out)
			index[key] = i
			out = append(out, &Error{Kind: f.kind, Err: f.cause})
			tmpl = append(tmpl, f.msg)
		}
		out[i].Endpoints = append(out[i].Endpoints, f.endpoint)
	}
	if len(out) == 0 {
		return nil
	}
	for i, e := range out {
		e.msg = strings.ReplaceAll(tmpl[i], epsMark, strings.Join(e.Endpoints, ", "))
	}
	first := out[0]
	first.more = out[1:]
	for _, m := range first.more {
		first.Endpoints = append(first.Endpoints, m.Endpoints...)
	}
	return first
}
