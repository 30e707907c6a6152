package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/mustersd/muster/internal/etcdclient"
	"github.com/mustersd/muster/internal/keyfmt"
)

// Exit codes.
const (
	exitOK      = 0
	exitFailure = 1 // something failed at run time
	exitUsage   = 2 // a bad flag, argument or value
)

// Defaults of the global flags.
const (
	defaultEndpoints   = "127.0.0.1:2379"
	defaultDialTimeout = 5 * time.Second
)

// globalEnv maps each global flag to the environment variable that sets it
// when the flag is not given on the command line.
var globalEnv = []struct{ flag, env string }{
	{"endpoints", "MUSTER_ENDPOINTS"},
	{"namespace", "MUSTER_NAMESPACE"},
	{"user", "MUSTER_USER"},
	{"password", "MUSTER_PASSWORD"},
	{"cacert", "MUSTER_CACERT"},
	{"cert", "MUSTER_CERT"},
	{"key", "MUSTER_KEY"},
	{"dial-timeout", "MUSTER_DIAL_TIMEOUT"},
}

// globalOptions are the values of the persistent flags of the root command.
type globalOptions struct {
	endpoints         string
	namespace         string
	user, password    string
	cacert, cert, key string
	dialTimeout       time.Duration
	logLevel          string
}

// app is what the commands share: the output streams, the environment, the
// global options and the logger built from them.
type app struct {
	stdout, stderr io.Writer
	getenv         func(string) string
	global         globalOptions
	level          slog.Level // of --log-level
	logger         *slog.Logger
}

func newApp(stdout, stderr io.Writer, getenv func(string) string) *app {
	return &app{
		stdout: stdout,
		stderr: stderr,
		getenv: getenv,
		logger: slog.New(slog.DiscardHandler),
	}
}

// exitError is an error that ends the process with code. The message is
// printed as "<prefix>: <err>", prefix defaulting to the command's path
// ("muster ls").
type exitError struct {
	code   int
	prefix string
	err    error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

// usageErrorf returns an error for a bad argument or flag value: exit code 2
// and a hint to read the command's help.
func usageErrorf(format string, args ...any) error {
	return &exitError{code: exitUsage, err: fmt.Errorf(format, args...)}
}

// failure wraps err, unless it already is an exitError, so that it ends the
// process with exitFailure.
func failure(err error) error {
	if err == nil {
		return nil
	}
	var ee *exitError
	if errors.As(err, &ee) {
		return err
	}
	return &exitError{code: exitFailure, err: err}
}

// runE adapts fn for cobra: every error fn returns is a run-time failure
// unless fn says otherwise with an exitError. Errors cobra reports itself
// (flags, arguments, unknown commands) are usage errors.
func runE(fn func(cmd *cobra.Command, args []string) error) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		return failure(fn(cmd, args))
	}
}

// execute runs the command line args and returns the exit code.
func execute(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) int {
	a := newApp(stdout, stderr, getenv)
	return a.execute(ctx, newRootCmd(a), args)
}

// execute runs root with args, prints the error if there is one, and
// returns the exit code.
func (a *app) execute(ctx context.Context, root *cobra.Command, args []string) int {
	root.SetArgs(args)
	root.SetOut(a.stdout)
	root.SetErr(a.stderr)
	cmd, err := root.ExecuteContextC(ctx)
	if err == nil {
		return exitOK
	}
	path := root.Name()
	if cmd != nil {
		path = cmd.CommandPath()
	}
	code := exitUsage
	prefix := path
	var ee *exitError
	if errors.As(err, &ee) {
		code = ee.code
		if ee.prefix != "" {
			prefix = ee.prefix
		}
	}
	fmt.Fprintf(a.stderr, "%s: %s\n", prefix, oneLine(err.Error()))
	if code == exitUsage {
		fmt.Fprintf(a.stderr, "Run '%s --help' for usage.\n", path)
	}
	return code
}

// oneLine folds cobra's multi-line "unknown command" error, with its
// suggestions, into one line.
func oneLine(msg string) string {
	msg = strings.TrimSpace(msg)
	if before, after, ok := strings.Cut(msg, "\n\nDid you mean this?\n"); ok {
		return before + "; did you mean " + strings.Join(strings.Fields(after), " or ") + "?"
	}
	return msg
}

// newRootCmd builds the command tree.
func newRootCmd(a *app) *cobra.Command {
	root := &cobra.Command{
		Use:   "muster",
		Short: "Service discovery on etcd",
		Long: `Muster keeps a registry of service endpoints in etcd.

See it work, on a throwaway etcd: 'muster demo'.

Start a development etcd with 'muster dev', then register and list endpoints:

  muster dev
  muster register order.rpc 127.0.0.1:8080 --zone eu-1a
  muster ls

Global flags can also be set through the environment (MUSTER_ENDPOINTS,
MUSTER_NAMESPACE, MUSTER_USER, MUSTER_PASSWORD, MUSTER_CACERT, MUSTER_CERT,
MUSTER_KEY, MUSTER_DIAL_TIMEOUT); a flag on the command line wins.`,
		SilenceUsage:      true,
		SilenceErrors:     true,
		PersistentPreRunE: a.setup,
	}
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error {
		return &exitError{code: exitUsage, err: err}
	})

	g := &a.global
	f := root.PersistentFlags()
	f.StringVar(&g.endpoints, "endpoints", defaultEndpoints, "etcd endpoints, comma separated (env MUSTER_ENDPOINTS)")
	f.StringVar(&g.namespace, "namespace", keyfmt.DefaultNamespace, "key prefix of the registry (env MUSTER_NAMESPACE)")
	f.StringVar(&g.user, "user", "", "etcd user name (env MUSTER_USER)")
	f.StringVar(&g.password, "password", "", "etcd password (env MUSTER_PASSWORD)")
	f.StringVar(&g.cacert, "cacert", "", "PEM file of the CA that signed etcd's certificate; turns TLS on (env MUSTER_CACERT)")
	f.StringVar(&g.cert, "cert", "", "PEM client certificate for etcd (env MUSTER_CERT)")
	f.StringVar(&g.key, "key", "", "PEM key of the client certificate (env MUSTER_KEY)")
	f.DurationVar(&g.dialTimeout, "dial-timeout", defaultDialTimeout, "how long to wait for etcd to answer at start (env MUSTER_DIAL_TIMEOUT)")
	f.StringVar(&g.logLevel, "log-level", "info", "level of the log on stderr: debug, info, warn or error")

	root.AddCommand(newDevCmd(a), newDemoCmd(a), newRegisterCmd(a), newLsCmd(a), newWatchCmd(a), newUICmd(a), newProxyCmd(a), newXDSCmd(a))
	return root
}

// setup completes the global options from the environment, checks them and
// builds the logger. It runs before every command.
func (a *app) setup(cmd *cobra.Command, _ []string) error {
	flags := cmd.Flags()
	for _, fe := range globalEnv {
		if err := a.fromEnv(flags, fe.flag, fe.env); err != nil {
			return err
		}
	}
	g := &a.global
	if len(a.endpointList()) == 0 {
		return usageErrorf("--endpoints: no etcd endpoint given")
	}
	if err := keyfmt.ValidateNamespace(g.namespace); err != nil {
		return usageErrorf("--namespace: %v", err)
	}
	if g.dialTimeout <= 0 {
		return usageErrorf("--dial-timeout %v: must be positive", g.dialTimeout)
	}
	if err := a.level.UnmarshalText([]byte(g.logLevel)); err != nil {
		return usageErrorf("--log-level %q: want debug, info, warn or error", g.logLevel)
	}
	a.logger = slog.New(slog.NewTextHandler(a.stderr, &slog.HandlerOptions{
		Level: a.level,
		ReplaceAttr: func(groups []string, attr slog.Attr) slog.Attr {
			if len(groups) == 0 && attr.Key == slog.TimeKey && attr.Value.Kind() == slog.KindTime {
				return slog.String(slog.TimeKey, attr.Value.Time().Format("15:04:05.000"))
			}
			return attr
		},
	}))
	return nil
}

// fromEnv sets flag name from the environment variable env when the flag was
// not given on the command line and the variable is set and not empty.
func (a *app) fromEnv(flags *pflag.FlagSet, name, env string) error {
	f := flags.Lookup(name)
	if f == nil || f.Changed {
		return nil
	}
	v := a.getenv(env)
	if v == "" {
		return nil
	}
	if err := f.Value.Set(v); err != nil {
		return usageErrorf("%s=%q: %v", env, v, err)
	}
	return nil
}

// endpointList returns the etcd endpoints of --endpoints.
func (a *app) endpointList() []string {
	var eps []string
	for e := range strings.SplitSeq(a.global.endpoints, ",") {
		if e = strings.TrimSpace(e); e != "" {
			eps = append(eps, e)
		}
	}
	return eps
}

// etcdConfig returns the etcd client configuration of the global options.
func (a *app) etcdConfig() etcdclient.Config {
	g := a.global
	return etcdclient.Config{
		Endpoints:   a.endpointList(),
		Username:    g.user,
		Password:    g.password,
		CACert:      g.cacert,
		Cert:        g.cert,
		Key:         g.key,
		DialTimeout: g.dialTimeout,
	}
}

// connect returns an etcd client for the global options. It does not wait
// for etcd to answer (unless a user is set: then it authenticates, within
// the dial timeout); the first request of a command does, within
// --dial-timeout.
func (a *app) connect() (*clientv3.Client, error) {
	cli, err := etcdclient.New(a.etcdConfig())
	if err != nil {
		return nil, a.etcdError(err)
	}
	return cli, nil
}

// etcdError turns an error of a request to etcd into the error the user
// sees: when etcd did not answer, one line that names the endpoints and says
// how to start an etcd; otherwise err itself.
func (a *app) etcdError(err error) error {
	reason, ok := unreachable(err)
	if !ok {
		return failure(err)
	}
	return &exitError{
		code:   exitFailure,
		prefix: "muster",
		err: fmt.Errorf("cannot reach etcd at %s (%s); is it running? start one with `muster dev`",
			strings.Join(a.endpointList(), ","), reason),
	}
}

// unreachable reports whether err means that etcd did not answer, and why.
func unreachable(err error) (reason string, ok bool) {
	if errors.Is(err, context.DeadlineExceeded) {
		return context.DeadlineExceeded.Error(), true
	}
	if s, isStatus := status.FromError(err); isStatus {
		switch s.Code() {
		case codes.DeadlineExceeded, codes.Unavailable:
			return s.Message(), true
		}
	}
	return "", false
}

// formatAndNamespace resolves --format, and the namespace to read it in:
// --namespace when it was set (flag or MUSTER_NAMESPACE), else the
// format's default.
func (a *app) formatAndNamespace(name string) (keyfmt.Format, string, error) {
	f, err := keyfmt.Lookup(name)
	if err != nil {
		return nil, "", usageErrorf("--format: %v", err)
	}
	ns := a.global.namespace
	if f != keyfmt.Native && ns == keyfmt.DefaultNamespace {
		ns = keyfmt.DefaultNamespaceOf(f)
	}
	return f, ns, nil
}
