package ship

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path"
	"strings"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// Location is an s3://bucket/prefix URL.
type Location struct {
	Bucket string
	Prefix string // without leading or trailing slashes; may be empty
}

func (l Location) String() string {
	if l.Prefix == "" {
		return "s3://" + l.Bucket
	}
	return "s3://" + l.Bucket + "/" + l.Prefix
}

// Join returns the location of a name under l.
func (l Location) Join(name string) Location {
	return Location{Bucket: l.Bucket, Prefix: strings.Trim(path.Join(l.Prefix, name), "/")}
}

// IsURL reports whether s names object storage rather than a local path.
func IsURL(s string) bool { return strings.HasPrefix(s, "s3://") }

// ParseLocation parses s3://bucket[/prefix].
func ParseLocation(s string) (Location, error) {
	rest, ok := strings.CutPrefix(s, "s3://")
	if !ok {
		return Location{}, fmt.Errorf("%q is not an s3://bucket/prefix URL", s)
	}
	bucket, prefix, _ := strings.Cut(rest, "/")
	if bucket == "" {
		return Location{}, fmt.Errorf("%q names no bucket", s)
	}
	prefix = strings.Trim(prefix, "/")
	if strings.Contains(prefix, "//") {
		return Location{}, fmt.Errorf("%q has an empty path element", s)
	}
	for _, el := range strings.Split(prefix, "/") {
		if el == "." || el == ".." {
			return Location{}, fmt.Errorf("%q has a %q path element", s, el)
		}
	}
	return Location{Bucket: bucket, Prefix: prefix}, nil
}

// Endpoint says how to reach the object store. Credentials come from the
// environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN)
// or a shared credentials file, never from a flag's value.
type Endpoint struct {
	// Host is host[:port] (default s3.amazonaws.com).
	Host string
	// Region is the bucket's region (empty: asked of the server).
	Region string
	// Insecure speaks plain HTTP (a loopback test server only).
	Insecure bool
	// CAFile, when set, is the PEM bundle that verifies the server.
	CAFile string
	// CredentialsFile is an AWS shared credentials file (profile
	// $AWS_PROFILE or "default"). Empty: the environment, then
	// $AWS_SHARED_CREDENTIALS_FILE.
	CredentialsFile string
}

// ErrNoCredentials is returned when no credentials can be found.
var ErrNoCredentials = errors.New("no object storage credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN for temporary ones), or name an AWS shared credentials file in AWS_SHARED_CREDENTIALS_FILE or with the credentials-file flag")

// Client returns a minio client for e. It resolves the credentials now, so
// that a missing or unreadable credentials file is an error at start.
func (e Endpoint) Client() (*minio.Client, error) {
	creds, err := e.credentials()
	if err != nil {
		return nil, err
	}
	host := e.Host
	if host == "" {
		host = "s3.amazonaws.com"
	}
	tr, err := minio.DefaultTransport(!e.Insecure)
	if err != nil {
		return nil, err
	}
	if e.CAFile != "" {
		pem, err := os.ReadFile(e.CAFile)
		if err != nil {
			return nil, fmt.Errorf("CA file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("CA file %s holds no PEM certificate", e.CAFile)
		}
		tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	// The shipper retries with its own backoff; the client's ten retries
	// would hold a round for minutes while the server is down.
	return minio.New(host, &minio.Options{Creds: creds, Secure: !e.Insecure, Region: e.Region, Transport: http.RoundTripper(tr), MaxRetries: 2})
}

func (e Endpoint) credentials() (*credentials.Credentials, error) {
	file := e.CredentialsFile
	if file == "" && (os.Getenv("AWS_ACCESS_KEY_ID") != "" || os.Getenv("AWS_SECRET_ACCESS_KEY") != "") {
		c := credentials.NewEnvAWS()
		v, err := c.GetWithContext(nil)
		if err != nil {
			return nil, err
		}
		if v.AccessKeyID == "" || v.SecretAccessKey == "" {
			return nil, errors.New("AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY must both be set")
		}
		return c, nil
	}
	if file == "" {
		file = os.Getenv("AWS_SHARED_CREDENTIALS_FILE")
	}
	if file == "" {
		return nil, ErrNoCredentials
	}
	st, err := os.Stat(file)
	if err != nil {
		return nil, fmt.Errorf("credentials file: %w", err)
	}
	if st.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("credentials file %s is mode %04o; it holds a secret and must be 0600 or stricter", file, st.Mode().Perm())
	}
	c := credentials.NewFileAWSCredentials(file, "")
	v, err := c.GetWithContext(nil)
	if err != nil {
		return nil, fmt.Errorf("credentials file %s: %w", file, err)
	}
	if v.AccessKeyID == "" || v.SecretAccessKey == "" {
		return nil, fmt.Errorf("credentials file %s: no aws_access_key_id and aws_secret_access_key in profile %q", file, profile())
	}
	return c, nil
}

func profile() string {
	if p := os.Getenv("AWS_PROFILE"); p != "" {
		return p
	}
	return "default"
}
