// Package s3test starts a real S3-compatible server with Object Lock for
// tests: versitygw, built from the Go module proxy by
// scripts/install-versitygw.sh (make deps runs it; a test that finds it
// missing builds it, and fails, saying why, when that is impossible). It
// listens on 127.0.0.1 with a posix backend in the test's temporary
// directory, versioning on.
package s3test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// Server is a running versitygw.
type Server struct {
	Addr           string // 127.0.0.1:port
	Access, Secret string
	bin, dir       string
	cmd            *exec.Cmd
	exited         chan struct{}
	t              testing.TB
}

var (
	binOnce sync.Once
	binPath string
	binErr  error
)

// Binary returns versitygw's path, building it when it is not cached.
func Binary(t testing.TB) string {
	t.Helper()
	binOnce.Do(func() {
		_, file, _, _ := runtime.Caller(0)
		script := filepath.Join(filepath.Dir(file), "..", "..", "scripts", "install-versitygw.sh")
		cmd := exec.Command("bash", script)
		cmd.Env = append(os.Environ(), "GO="+goBin())
		var stderr strings.Builder
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			binErr = fmt.Errorf("versitygw, the S3 server these tests need, is not built and could not be (scripts/install-versitygw.sh, run by make deps): %v\n%s", err, stderr.String())
			return
		}
		binPath = strings.TrimSpace(string(out))
	})
	if binErr != nil {
		t.Fatal(binErr)
	}
	return binPath
}

// goBin is the go command: go test puts its GOROOT/bin first in PATH.
func goBin() string {
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	return "go"
}

// Start starts a server; it is stopped when the test ends.
func Start(t testing.TB) *Server {
	t.Helper()
	s := &Server{bin: Binary(t), dir: t.TempDir(), t: t, Access: "kvhtest" + randHex(4), Secret: randHex(20)}
	for _, d := range []string{"data", "versions"} {
		if err := os.MkdirAll(filepath.Join(s.dir, d), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s.Addr = ln.Addr().String()
	ln.Close()
	s.start()
	t.Cleanup(s.Stop)
	return s
}

func randHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

func (s *Server) start() {
	s.t.Helper()
	cmd := exec.Command(s.bin, "--port", s.Addr, "posix", "--versioning-dir", filepath.Join(s.dir, "versions"), filepath.Join(s.dir, "data"))
	// The root account's keys go by environment, not argv.
	cmd.Env = append(os.Environ(), "ROOT_ACCESS_KEY="+s.Access, "ROOT_SECRET_KEY="+s.Secret)
	log, err := os.OpenFile(filepath.Join(s.dir, "versitygw.log"), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		s.t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		s.t.Fatalf("starting versitygw: %v", err)
	}
	log.Close()
	s.cmd, s.exited = cmd, make(chan struct{})
	go func() { cmd.Wait(); close(s.exited) }()
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", s.Addr, 200*time.Millisecond)
		if err == nil {
			c.Close()
			return
		}
		select {
		case <-s.exited:
			b, _ := os.ReadFile(filepath.Join(s.dir, "versitygw.log"))
			s.t.Fatalf("versitygw exited at start: %s", b)
		default:
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("versitygw did not listen on %s within 30s", s.Addr)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Stop stops the server (a server outage); its data stays.
func (s *Server) Stop() {
	if s.cmd == nil {
		return
	}
	s.cmd.Process.Kill()
	<-s.exited
	s.cmd = nil
}

// Restart starts a stopped server again on the same address and data.
func (s *Server) Restart() {
	s.t.Helper()
	if s.cmd != nil {
		s.t.Fatal("s3test: Restart of a running server")
	}
	s.start()
}

// Env sets the AWS credential variables for the test's duration.
func (s *Server) Env(t testing.TB) {
	t.Setenv("AWS_ACCESS_KEY_ID", s.Access)
	t.Setenv("AWS_SECRET_ACCESS_KEY", s.Secret)
	t.Setenv("AWS_SESSION_TOKEN", "")
}

// Client returns a client with the root account's keys.
func (s *Server) Client(t testing.TB) *minio.Client {
	t.Helper()
	c, err := minio.New(s.Addr, &minio.Options{Creds: credentials.NewStaticV4(s.Access, s.Secret, ""), Region: "us-east-1", MaxRetries: 1})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// Bucket makes a bucket with Object Lock (and so versioning) on.
func (s *Server) Bucket(t testing.TB, name string, lock bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := s.Client(t).MakeBucket(ctx, name, minio.MakeBucketOptions{ObjectLocking: lock}); err != nil {
		t.Fatalf("making bucket %s: %v", name, err)
	}
}

// Log returns what the server has written to its output, for a failing
// test to show.
func (s *Server) Log() string {
	b, _ := os.ReadFile(filepath.Join(s.dir, "versitygw.log"))
	return string(b)
}
