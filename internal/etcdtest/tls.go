package etcdtest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TLSFiles are the PEM files of a throwaway certificate authority and of
// the certificates it signed, as written by NewTLSFiles and used by members
// started WithTLS.
type TLSFiles struct {
	// CA is the certificate of the authority that signed Cert and
	// ClientCert; clients verify the member's certificate against it, and
	// with WithClientCertAuth the member verifies client certificates
	// against it.
	CA string
	// Cert and Key are the server certificate (valid for 127.0.0.1, ::1
	// and localhost, for server and client authentication) and its key.
	Cert, Key string
	// ClientCert and ClientKey are a client certificate (common name
	// ClientCertCN) and its key.
	ClientCert, ClientKey string
}

// ClientCertCN is the common name of the client certificate in TLSFiles.
// With WithClientCertAuth and WithAuth, etcd takes a request that carries
// the client certificate but no auth token as coming from this user.
const ClientCertCN = "etcdtest-client"

// certValidity is how long the generated certificates are valid (from an
// hour in the past, to tolerate clock skew).
const certValidity = 24 * time.Hour

// NewTLSFiles generates, in a new t.TempDir() directory, a certificate
// authority (ECDSA P-256, valid for about a day, with a unique name), a
// server certificate for 127.0.0.1, ::1 and localhost, and a client
// certificate, both signed by that authority. Two calls give unrelated
// authorities, so one call's CA is a "wrong CA" for the other's
// certificates. It calls t.Fatal on failure.
func NewTLSFiles(t testing.TB) TLSFiles {
	t.Helper()
	f, err := writeTLSFiles(t.TempDir())
	if err != nil {
		t.Fatalf("etcdtest: generating TLS files: %v", err)
	}
	return f
}

func writeTLSFiles(dir string) (TLSFiles, error) {
	now := time.Now()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return TLSFiles{}, err
	}
	caSerial, err := serial()
	if err != nil {
		return TLSFiles{}, err
	}
	caTmpl := &x509.Certificate{
		SerialNumber:          caSerial,
		Subject:               pkix.Name{CommonName: fmt.Sprintf("etcdtest CA %x", caSerial)},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(certValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return TLSFiles{}, err
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return TLSFiles{}, err
	}

	leaf := func(cn string, usage []x509.ExtKeyUsage, server bool) (certPEM, keyPEM []byte, err error) {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, nil, err
		}
		sn, err := serial()
		if err != nil {
			return nil, nil, err
		}
		tmpl := &x509.Certificate{
			SerialNumber: sn,
			Subject:      pkix.Name{CommonName: cn},
			NotBefore:    now.Add(-time.Hour),
			NotAfter:     now.Add(certValidity),
			KeyUsage:     x509.KeyUsageDigitalSignature,
			ExtKeyUsage:  usage,
		}
		if server {
			tmpl.DNSNames = []string{"localhost"}
			tmpl.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
		if err != nil {
			return nil, nil, err
		}
		kb, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			return nil, nil, err
		}
		return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
			pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kb}), nil
	}
	srvCert, srvKey, err := leaf("etcdtest-server", []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}, true)
	if err != nil {
		return TLSFiles{}, err
	}
	cliCert, cliKey, err := leaf(ClientCertCN, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, false)
	if err != nil {
		return TLSFiles{}, err
	}

	f := TLSFiles{
		CA:         filepath.Join(dir, "ca.pem"),
		Cert:       filepath.Join(dir, "server.pem"),
		Key:        filepath.Join(dir, "server-key.pem"),
		ClientCert: filepath.Join(dir, "client.pem"),
		ClientKey:  filepath.Join(dir, "client-key.pem"),
	}
	for _, w := range []struct {
		path string
		data []byte
		mode os.FileMode
	}{
		{f.CA, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), 0o644},
		{f.Cert, srvCert, 0o644},
		{f.Key, srvKey, 0o600},
		{f.ClientCert, cliCert, 0o644},
		{f.ClientKey, cliKey, 0o600},
	} {
		if err := os.WriteFile(w.path, w.data, w.mode); err != nil {
			return TLSFiles{}, err
		}
	}
	return f, nil
}

func serial() (*big.Int, error) {
	return rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
}

// ClientTLSConfig returns a client TLS configuration that trusts f.CA and
// presents f.ClientCert. It calls t.Fatal on failure.
func (f TLSFiles) ClientTLSConfig(t testing.TB) *tls.Config {
	t.Helper()
	tc, err := f.clientConfig()
	if err != nil {
		t.Fatalf("etcdtest: client TLS config: %v", err)
	}
	return tc
}

func (f TLSFiles) clientConfig() (*tls.Config, error) {
	pemCA, err := os.ReadFile(f.CA)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pemCA) {
		return nil, fmt.Errorf("no certificate in %s", f.CA)
	}
	cert, err := tls.LoadX509KeyPair(f.ClientCert, f.ClientKey)
	if err != nil {
		return nil, err
	}
	return &tls.Config{
		MinVersion:   tls.VersionTLS12,
		RootCAs:      pool,
		Certificates: []tls.Certificate{cert},
	}, nil
}
