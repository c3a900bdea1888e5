package ship_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kvhygiene/kvh/internal/s3test"
	"github.com/kvhygiene/kvh/ship"
	"github.com/minio/minio-go/v7"
)

// BenchmarkShip ships a closed 4 MiB trail (64 KiB segments) to a real
// versitygw on loopback, against a reference measured in the same run:
// the same bytes uploaded as one locked object per trail file with plain
// PutObject. ship/put is what chunking, checkpoint-bounded cuts, the state
// file's fsyncs and the Object Lock check cost over the bare uploads.
func BenchmarkShip(b *testing.B) {
	srv := s3test.Start(b)
	srv.Bucket(b, "bench", true)
	srv.Env(b)
	c, err := ship.Endpoint{Host: srv.Addr, Insecure: true, Region: "us-east-1"}.Client()
	if err != nil {
		b.Fatal(err)
	}
	k := newKeysB(b)
	dir := filepath.Join(b.TempDir(), "trail")
	l, err := forensicOpen(dir, k, 64<<10)
	if err != nil {
		b.Fatal(err)
	}
	pad := strings.Repeat("x", 200)
	for written := 0; written < 4<<20; written += 256 {
		l.AppendAsync(map[string]any{"ev": "free", "pad": pad})
	}
	l.Close()
	var files [][]byte
	var total int64
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if strings.HasSuffix(e.Name(), ".jsonl") {
			data, _ := os.ReadFile(filepath.Join(dir, e.Name()))
			files = append(files, data)
			total += int64(len(data))
		}
	}
	ctx := context.Background()
	var shipT, putT time.Duration
	b.SetBytes(total)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		os.RemoveAll(filepath.Join(dir, ship.StateDir))
		s, err := ship.New(ship.Config{TrailDir: dir, Node: ship.Location{Bucket: "bench", Prefix: fmt.Sprintf("ship/%d", i)}, Client: c,
			Retention: func() time.Duration { return time.Hour }})
		if err != nil {
			b.Fatal(err)
		}
		t0 := time.Now()
		if err := s.Round(ctx); err != nil {
			b.Fatal(err)
		}
		shipT += time.Since(t0)
		t0 = time.Now()
		for j, data := range files {
			if _, err := c.PutObject(ctx, "bench", fmt.Sprintf("put/%d/%d", i, j), bytes.NewReader(data), int64(len(data)), minio.PutObjectOptions{
				Mode: minio.Compliance, RetainUntilDate: time.Now().Add(time.Hour), SendContentMd5: true}); err != nil {
				b.Fatal(err)
			}
		}
		putT += time.Since(t0)
	}
	b.StopTimer()
	n := float64(b.N)
	b.ReportMetric(shipT.Seconds()/n, "ship-s")
	b.ReportMetric(putT.Seconds()/n, "put-s")
	b.ReportMetric(shipT.Seconds()/putT.Seconds(), "ship/put")
	b.ReportMetric(float64(total)*n/shipT.Seconds()/(1<<20), "ship-MiB/s")
	b.ReportMetric(float64(len(files)), "files")
}
