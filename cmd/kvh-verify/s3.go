package main

import (
	"context"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/kvhygiene/kvh/forensic"
	"github.com/kvhygiene/kvh/ship"
	"github.com/minio/minio-go/v7"
)

// s3Flags are how log, fleet and --checkpoint reach object storage.
// Credentials are never a flag's value: AWS_ACCESS_KEY_ID,
// AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, or a shared credentials file.
type s3Flags struct {
	ship.Endpoint
	timeout time.Duration
}

func addS3Flags(c *command) *s3Flags {
	f := &s3Flags{}
	c.StringVar(&f.Host, "s3-endpoint", "s3.amazonaws.com", "for s3:// locations: the object store's host[:port]")
	c.StringVar(&f.Region, "s3-region", "", "for s3:// locations: the bucket's region (default: asked of the store)")
	c.BoolVar(&f.Insecure, "s3-insecure", false, "for s3:// locations: plain HTTP, without TLS (a store on loopback only)")
	c.StringVar(&f.CAFile, "s3-ca-file", "", "for s3:// locations: PEM CA bundle that verifies the store")
	c.StringVar(&f.CredentialsFile, "s3-credentials-file", "", "for s3:// locations: AWS shared credentials file (mode 0600) instead of the AWS_* variables")
	c.DurationVar(&f.timeout, "s3-timeout", 10*time.Minute, "for s3:// locations: how long reading a node's trail may take")
	return f
}

func (f *s3Flags) client() (*minio.Client, error) { return f.Client() }

// fetchTrail copies the shipped trail at url into a new private temporary
// directory; cleanup removes it.
func (f *s3Flags) fetchTrail(c *minio.Client, loc ship.Location) (string, *ship.Fetched, func(), error) {
	dir, err := os.MkdirTemp("", "kvh-verify-s3-")
	if err != nil {
		return "", nil, nil, err
	}
	cleanup := func() { os.RemoveAll(dir) }
	ctx, cancel := context.WithTimeout(context.Background(), f.timeout)
	defer cancel()
	fetched, err := ship.Fetch(ctx, c, loc, dir)
	if err != nil {
		cleanup()
		return "", nil, nil, err
	}
	return dir, fetched, cleanup, nil
}

// storeVerdict folds what the store shows about the objects into a report:
// an object changed after shipping fails a trail that otherwise verified.
func storeVerdict(rep *forensic.Report, f *ship.Fetched) {
	for _, n := range f.Notes {
		rep.Warnings = append(rep.Warnings, "store: "+n)
	}
	if len(f.Problems) == 0 {
		return
	}
	if rep.OK {
		rep.OK = false
		reason := "object storage: " + f.Problems[0]
		if len(f.Problems) > 1 {
			reason += fmt.Sprintf(" (and %d more: %s)", len(f.Problems)-1, strings.Join(f.Problems[1:], "; "))
		}
		rep.Problem = &forensic.Problem{Reason: reason}
		return
	}
	for _, p := range f.Problems {
		rep.Warnings = append(rep.Warnings, "store: "+p)
	}
}

// externalCheckpoints reads one --checkpoint: a file holding a signed note
// or a checkpoints.jsonl line, or the s3:// location a node ships to (the
// newest shipped checkpoint of every generation).
func (f *s3Flags) externalCheckpoints(arg string) ([][]byte, error) {
	if !ship.IsURL(arg) {
		b, err := os.ReadFile(arg)
		if err != nil {
			return nil, err
		}
		n, err := forensic.ParseExternalCheckpoint(b)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", arg, err)
		}
		return [][]byte{n}, nil
	}
	loc, err := ship.ParseLocation(arg)
	if err != nil {
		return nil, err
	}
	c, err := f.client()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", arg, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), f.timeout)
	defer cancel()
	fetched, err := ship.FetchCheckpoints(ctx, c, loc)
	if err != nil {
		return nil, err
	}
	if len(fetched.Problems) > 0 {
		return nil, fmt.Errorf("%s: the store shows the shipped checkpoints changed: %s", arg, strings.Join(fetched.Problems, "; "))
	}
	return fetched.External, nil
}
